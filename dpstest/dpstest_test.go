package dpstest_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/dps"
	"github.com/berth-iot/berth/dpstest"
	"github.com/berth-iot/berth/serviceclient"
)

// enroll creates an individual enrollment and returns the device's options
// for transport, retrying nothing unless the test says so.
func enroll(t *testing.T, srv *dpstest.Server, regID, transport string) deviceclient.Options {
	t.Helper()
	svc, err := serviceclient.New(srv.DPSConnectionString, serviceclient.Options{CAFile: srv.CAFile, Address: srv.HTTPSAddr})
	if err != nil {
		t.Fatal(err)
	}
	e, err := svc.PutEnrollment(context.Background(), &dps.IndividualEnrollment{RegistrationID: regID,
		Common: dps.Common{Attestation: &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}}}, "")
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.MQTTAddr
	if transport == deviceclient.TransportHTTPS {
		addr = srv.HTTPSAddr
	}
	return deviceclient.Options{Transport: transport, GlobalEndpoint: srv.GlobalEndpoint, Address: addr, RootCAs: srv.CertPool(),
		IDScope: srv.IDScope, RegistrationID: regID, SymmetricKey: e.Attestation.SymmetricKey.PrimaryKey,
		MaxPoll: 50 * time.Millisecond, MaxRetries: -1}
}

// Each injected answer reaches the device as Azure's, with retry-after, on
// both transports; once they are used up the device is assigned.
func TestRegistrationFaults(t *testing.T) {
	srv := dpstest.NewServer(t, dpstest.ThrottleRegistrations(1), dpstest.FailRegistrations(1))
	for _, transport := range []string{deviceclient.TransportMQTT, deviceclient.TransportHTTPS} {
		t.Run(transport, func(t *testing.T) {
			opts := enroll(t, srv, "dev-"+transport, transport)
			for _, want := range []struct{ status, code int }{{429, 429001}, {503, 503000}} {
				_, err := deviceclient.Provision(context.Background(), opts)
				var e *deviceclient.Error
				if !errors.As(err, &e) || e.Status != want.status || e.Code != want.code || !e.HasRetryAfter || e.RetryAfter != time.Second {
					t.Fatalf("want %d errorCode %d with retry-after 1, got %v (%+v)", want.status, want.code, err, e)
				}
			}
			op, err := deviceclient.Provision(context.Background(), opts)
			if err != nil || op.Status != dps.StatusAssigned {
				t.Fatalf("after the faults: %v %+v", err, op)
			}
			// Switched on again while the server runs.
			srv.ThrottleRegistrations(1)
			srv.FailRegistrations(1)
		})
	}
	if n := srv.InjectedFaults(); n != 4 {
		t.Fatalf("InjectedFaults = %d, want 4", n)
	}
}

// The library under test retries: with the default retries the device gets
// through the throttled and failed answers.
func TestProvisionRetriesThrough(t *testing.T) {
	srv := dpstest.NewServer(t, dpstest.ThrottleRegistrations(2), dpstest.FailRegistrations(1))
	opts := enroll(t, srv, "retrier", deviceclient.TransportMQTT)
	opts.MaxRetries = 0 // the default, 5
	op, err := deviceclient.Provision(context.Background(), opts)
	if err != nil || op.RegistrationState == nil || op.RegistrationState.AssignedHub != srv.HubName {
		t.Fatalf("provision: %v %+v", err, op)
	}
	if n := srv.InjectedFaults(); n != 3 {
		t.Fatalf("InjectedFaults = %d, want 3", n)
	}
}
