package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/sqlite"
)

// openLocal starts (without listening) and stops a berth on dir with the
// given first host and hub name, returning New's error and, on success,
// the hubs it served and its default.
func openLocal(t *testing.T, dir string, cfg Config) (hubs []string, def string, err error) {
	t.Helper()
	cfg.DataDir = dir
	cfg.StreamListen = "none"
	cfg.AdminAddr = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := New(t.Context(), cfg)
	if err != nil {
		return nil, "", err
	}
	for _, h := range s.Hubs().List() {
		hubs = append(hubs, h.Name)
	}
	def = s.Hubs().Default().Info.Name
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	return hubs, def, nil
}

// A data directory keeps its hub: a start with another hub name (the
// usual way: another first --host and no --hub-name) is refused with a
// message naming both and the ways forward, instead of adding a second,
// empty default hub. The same name in another spelling is the same hub;
// the first --host alone may change; --accept-new-hub really adds one.
func TestDataDirKeepsItsHub(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"iot.example.com"}}); err != nil {
		t.Fatal(err)
	}

	_, _, err := openLocal(t, dir, Config{Hosts: []string{"10.0.0.7"}})
	var me *HubMismatchError
	if !errors.As(err, &me) || me.Stored != "iot.example.com" || me.Given != "10.0.0.7" {
		t.Fatalf("another first --host: New = %v; want a HubMismatchError", err)
	}
	for _, want := range []string{`"iot.example.com"`, `"10.0.0.7"`, "--hub-name iot.example.com", "berth hub create --name 10.0.0.7", "--accept-new-hub"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q does not say %s", err, want)
		}
	}

	for _, same := range []Config{
		{Hosts: []string{"IOT.Example.com"}},
		{Hosts: []string{"iot.example.com."}},
		{Hosts: []string{"10.0.0.7"}, HubName: "iot.example.com"}, // a new DPS endpoint, the same hub
		{Hosts: []string{"10.0.0.7"}, HubName: "iot.example.com."},
	} {
		hubs, _, err := openLocal(t, dir, same)
		if err != nil {
			t.Fatalf("%+v: %v", same, err)
		}
		if len(hubs) != 1 {
			t.Fatalf("%+v: hubs %v; want the one", same, hubs)
		}
	}

	hubs, def, err := openLocal(t, dir, Config{Hosts: []string{"hub-b.example.com"}, AcceptNewHub: true})
	if err != nil || def != "hub-b.example.com" || len(hubs) != 2 {
		t.Fatalf("--accept-new-hub: hubs %v default %q, %v", hubs, def, err)
	}
	// Recorded: the new hub starts without the flag, the old one is refused.
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"hub-b.example.com"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"iot.example.com"}}); !errors.As(err, &me) || me.Stored != "hub-b.example.com" {
		t.Fatalf("back to the previous hub: New = %v; want a HubMismatchError", err)
	}
	// That hub still exists: the message says so, and offers no hub create.
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"iot.example.com"}}); !strings.Contains(err.Error(), "which the store also serves") || strings.Contains(err.Error(), "hub create") {
		t.Errorf("message %q", err)
	}
}

// An IP address is the same host in any spelling.
func TestSameHost(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"Hub.Example.com", "hub.example.COM", true},
		{"hub.example.com.", "hub.example.com", true},
		{"::1", "0:0:0:0:0:0:0:1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"127.0.0.1", "localhost", false},
		{"hub.example.com", "hub.example.org", false},
	} {
		if got := sameHost(c.a, c.b); got != c.want {
			t.Errorf("sameHost(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// A data directory from before the identity record (hubs, no record) is
// judged by its hubs: one of them starts and is recorded, another is
// refused.
func TestDataDirWithoutIdentityRecord(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"iot.example.com"}}); err != nil {
		t.Fatal(err)
	}
	st, err := sqlite.Open(dir + "/berth.db")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Delete(t.Context(), store.KindConfig, clusterKey, ""); err != nil {
		t.Fatal(err)
	}
	rec, err := st.Get(t.Context(), store.KindConfig, "hubs")
	if err != nil {
		t.Fatal(err)
	}
	var infos []hub.HubInfo
	_ = json.Unmarshal(rec.Data, &infos)
	st.Close()
	if len(infos) != 1 {
		t.Fatalf("hubs %+v", infos)
	}
	var me *HubMismatchError
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"other.example.com"}}); !errors.As(err, &me) {
		t.Fatalf("New = %v; want a HubMismatchError", err)
	}
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"iot.example.com"}}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := openLocal(t, dir, Config{Hosts: []string{"other.example.com"}}); !errors.As(err, &me) {
		t.Fatalf("after the record: New = %v; want a HubMismatchError", err)
	}
}

// ownPostgres creates a database of the test's own on the local
// PostgreSQL and returns its URL, or skips without one.
func ownPostgres(t *testing.T) string {
	t.Helper()
	admin := os.Getenv("BERTH_TEST_POSTGRES")
	if admin == "" {
		admin = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		if os.Getenv("BERTH_REQUIRE_SERVICES") != "" {
			t.Fatalf("PostgreSQL: %v", err)
		}
		t.Skipf("PostgreSQL at BERTH_TEST_POSTGRES or the local server: %v", err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	db := "berth_ident_" + hex.EncodeToString(rnd[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{db}.Sanitize()); err != nil {
		conn.Close(ctx)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{db}.Sanitize()+" WITH (FORCE)")
		conn.Close(context.Background())
	})
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + db
	return u.String()
}

// A cluster is renamed by starting one node with the new names and
// --accept-new-hub: the identity record takes them, and then nodes with
// the new names start and nodes with the old ones are refused.
func TestClusterRenamedWithAcceptNewHub(t *testing.T) {
	storeURL := ownPostgres(t)
	dir := t.TempDir() // one data directory, nodes one after the other: one CA
	node := func(host string, accept bool) error {
		_, _, err := openLocal(t, dir, Config{Hosts: []string{host}, StoreURL: storeURL, AcceptNewHub: accept})
		return err
	}
	if err := node("iot.example.com", false); err != nil {
		t.Fatal(err)
	}
	var me *ClusterMismatchError
	if err := node("IOT.example.com.", false); err != nil {
		t.Fatalf("the same first host in another spelling: %v", err)
	}
	if err := node("iot2.example.com", false); !errors.As(err, &me) {
		t.Fatalf("another first host: %v; want a ClusterMismatchError", err)
	}
	if err := node("iot2.example.com", true); err != nil {
		t.Fatalf("--accept-new-hub: %v", err)
	}
	if err := node("iot2.example.com", false); err != nil {
		t.Fatalf("the new names after the rename: %v", err)
	}
	if err := node("iot.example.com", false); !errors.As(err, &me) {
		t.Fatalf("the old names after the rename: %v; want a ClusterMismatchError", err)
	}
}
