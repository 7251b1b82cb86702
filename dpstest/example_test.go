package dpstest_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/dpstest"
	"github.com/berth-iot/berth/serviceclient"
)

// A device library's provisioning retry, tested: DPS throttles the first
// two registrations (429 with retry-after), and the library (here
// deviceclient) must wait and try again until the device is assigned. In a
// test, dpstest.NewServer(t, …) does what Start and Close do here.
func Example_provisioningRetry() {
	srv, err := dpstest.Start(dpstest.ThrottleRegistrations(2))
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close()
	ctx := context.Background()

	// Enroll the device, as its manufacturer would.
	svc, err := serviceclient.New(srv.DPSConnectionString, serviceclient.Options{CAFile: srv.CAFile, Address: srv.HTTPSAddr})
	if err != nil {
		log.Fatal(err)
	}
	e, err := svc.PutEnrollment(ctx, &dps.IndividualEnrollment{RegistrationID: "sensor-1",
		Common: dps.Common{Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}}, "")
	if err != nil {
		log.Fatal(err)
	}

	// The firmware library provisions.
	op, err := deviceclient.Provision(ctx, deviceclient.Options{
		GlobalEndpoint: srv.GlobalEndpoint, Address: srv.MQTTAddr, RootCAs: srv.CertPool(),
		IDScope: srv.IDScope, RegistrationID: "sensor-1", SymmetricKey: e.Attestation.SymmetricKey.PrimaryKey,
		MaxPoll: 50 * time.Millisecond, // the server says 1 s; keep the test fast
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(op.Status, op.RegistrationState.AssignedHub, "after", srv.InjectedFaults(), "throttled attempts")
	// Output: assigned hub.berth.test after 2 throttled attempts
}
