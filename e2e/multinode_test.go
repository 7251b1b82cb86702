package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"

	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/server"
)

// The machine's PostgreSQL and NATS, as the store and stream tests use
// them; BERTH_TEST_POSTGRES and BERTH_TEST_NATS_URL override.
const (
	defaultTestPostgres = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	defaultTestNATS     = "nats://127.0.0.1:4222"
)

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// skipUnlessReachable skips, saying why, when a service the test needs is
// not running at all; under make test (BERTH_REQUIRE_SERVICES) it must be,
// and the test fails instead.
func skipUnlessReachable(t *testing.T, what string, err error) {
	t.Helper()
	var netErr net.Error
	unreachable := errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) ||
		errors.Is(err, nats.ErrNoServers) || (errors.As(err, &netErr) && netErr.Timeout())
	if unreachable {
		testenv.Unavailable(t, "%s not reachable for the several-nodes test: %v", what, err)
	}
	t.Fatalf("%s: %v", what, err)
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// sharedStore creates a schema of the test's own on the test PostgreSQL,
// dropped at cleanup, and returns a store URL whose connections use it
// (search_path), so that every node of the test shares it and nothing else.
func sharedStore(t *testing.T) string {
	t.Helper()
	dsn := envOr("BERTH_TEST_POSTGRES", defaultTestPostgres)
	u, err := url.Parse(dsn)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		t.Fatalf("BERTH_TEST_POSTGRES must be a postgres:// URL for this test (err %v)", err)
	}
	schema := pgx.Identifier{"berth_e2e_" + randomSuffix()}
	if err := pgExec(t.Context(), dsn, `CREATE SCHEMA `+schema.Sanitize()); err != nil {
		skipUnlessReachable(t, "PostgreSQL at "+u.Redacted(), err)
	}
	t.Cleanup(func() {
		// The test's context is over by now.
		if err := pgExec(context.Background(), dsn, `DROP SCHEMA `+schema.Sanitize()+` CASCADE`); err != nil {
			t.Errorf("drop schema %s: %v", schema[0], err)
		}
	})
	q := u.Query()
	q.Set("search_path", schema[0])
	u.RawQuery = q.Encode()
	return u.String()
}

// pgExec runs one statement on a connection of its own.
func pgExec(ctx context.Context, dsn, sql string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// joinDir returns a data directory for another node of first's cluster:
// the nodes of one cluster serve certificates from one CA, so it holds a
// copy of first's development CA (docs/operations.md#running-a-cluster).
func joinDir(t *testing.T, first *berth) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "ca"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(first.dataDir, "ca", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "ca", f), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// sharedNATS returns the test NATS's URL once it answers.
func sharedNATS(t *testing.T) string {
	t.Helper()
	nu := envOr("BERTH_TEST_NATS_URL", defaultTestNATS)
	nc, err := nats.Connect(nu, nats.Timeout(2*time.Second))
	if err != nil {
		skipUnlessReachable(t, "NATS at "+nu, err)
	}
	nc.Close()
	return nu
}

// Two berth nodes share one PostgreSQL and one NATS; the device is
// connected to node B, the service talks to node A. Desired properties, a
// direct method and a cloud-to-device message must all reach the device
// through B (before cross-node delivery the notification was lost, the
// method answered 404 and the message waited for the device's next
// subscribe: the MQTT front end does not poll the queue).
func TestSeveralNodesPushToADeviceOnAnotherNode(t *testing.T) {
	cfg := server.Config{StoreURL: sharedStore(t), NATSURL: sharedNATS(t)}
	a := startWith(t, t.TempDir(), cfg)
	b := startWith(t, joinDir(t, a), cfg)

	// IDs of the run's own: other runs may share the NATS.
	id := "multi-" + randomSuffix()
	d := b.hubConnect(id, a.createHubDevice(id), false)
	d.subscribe("$iothub/twin/res/#", 0)
	d.subscribe("$iothub/twin/PATCH/properties/desired/#", 0)
	d.subscribe(methodsFilter, 0)
	d.subscribe("devices/"+id+"/messages/devicebound/#", 1)

	// desired patch
	{
		_, dv := d.deviceDesired("start")
		_, status, body, _ := a.patchTwin(id, a.getTwin(id).ETag, `{"properties":{"desired":{"rate":5}}}`)
		if status != 200 {
			t.Fatalf("PATCH twin through A: %d %s", status, body)
		}
		m := d.next(d.desired, "the desired notification from node A")
		if want := "$iothub/twin/PATCH/properties/desired/?$version=" + strconv.FormatInt(dv+1, 10); m.Topic() != want {
			t.Fatalf("notification topic %q, want %q", m.Topic(), want)
		}
		checkJSON(t, "desired notification", m.Payload(), `{"rate":5,"$version":`+strconv.FormatInt(dv+1, 10)+`}`)
	}

	// direct method
	{
		res := a.doAsync("POST", invokePath(id), `{"methodName":"reboot","payload":{"delay":3},"responseTimeoutInSeconds":10}`)
		req := d.next(d.methods, "the method request from node A")
		checkMethodRequest(t, req.Topic(), "reboot")
		checkJSON(t, "method request payload", req.Payload(), `{"delay":3}`)
		d.answerMethod(req, 201, `{"rebooted":true}`)
		r := awaitHTTP(t, "invoke through A", res)
		if r.status != 200 {
			t.Fatalf("invoke through A: %d %s", r.status, r.body)
		}
		checkJSON(t, "invoke result", r.body, `{"status":201,"payload":{"rebooted":true}}`)
	}

	// C2D wake-up
	{
		s := a.sendC2D(id, "hello from A", nil)
		d.expectC2D("the C2D message sent through node A", s.MessageID, "hello from A")
	}

	// method waits for a device connecting to B
	{
		late := "late-" + randomSuffix()
		key := a.createHubDevice(late)
		res := a.doAsync("POST", invokePath(late), `{"methodName":"hello","payload":1,"connectTimeoutInSeconds":30,"responseTimeoutInSeconds":10}`)
		ld := b.hubConnect(late, key, false)
		ld.subscribe(methodsFilter, 0)
		ld.answerMethod(ld.next(ld.methods, "the method request from node A"), 200, `"hi"`)
		r := awaitHTTP(t, "invoke late device through A", res)
		if r.status != 200 {
			t.Fatalf("invoke late device through A: %d %s", r.status, r.body)
		}
		checkJSON(t, "late invoke result", r.body, `{"status":200,"payload":"hi"}`)
	}

	// not online anywhere
	{
		off := "off-" + randomSuffix()
		a.createHubDevice(off)
		r := awaitHTTP(t, "invoke offline device", a.doAsync("POST", invokePath(off), `{"methodName":"m"}`))
		checkHubError(t, "invoke offline device through A", r.status, r.header, r.body, 404, "DeviceNotOnline")
	}
}
