package mqtt

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/heapprofile"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
)

// Environment of the client helper process.
const (
	envMemAddr = "BERTH_MQTT_MEMTEST_ADDR"
	envMemCA   = "BERTH_MQTT_MEMTEST_CA"
	envMemN    = "BERTH_MQTT_MEMTEST_N"
	// envMemKind is "dps" or "hub", with "-x509" for clients that
	// authenticate by certificate: which session the clients open.
	envMemKind = "BERTH_MQTT_MEMTEST_KIND"
	// envMemDeviceCA is the PEM certificate and key that issue the -x509
	// clients' certificates.
	envMemDeviceCA = "BERTH_MQTT_MEMTEST_DEVICE_CA"
)

// The budgets of an idle connection's live heap and stack, TLS included
// (the bench's target is 16 KiB of resident memory per device, about
// twice the live memory at the Go runtime's default GOGC). Measured on
// Linux with the idle poller: 3.9–4.5 KiB, 6.2–7.3 KiB with a client
// certificate, which crypto/tls keeps parsed (docs/benchmarks.md, "Round
// 3: idle MQTT connections"); the budgets leave room for noise. Elsewhere
// an idle connection keeps a goroutine, and the budget grows by its 2 KiB
// stack and g.
const (
	idleBudget     = 6 * 1024
	idleBudgetX509 = 9 * 1024
	// idleGoroutineBudget is what an idle connection may cost without
	// the poller: its goroutine's stack and g.
	idleGoroutineBudget = 3 * 1024
)

// memDevices is how many devices the idle-memory tests connect.
const memDevices = 500

// TestIdleConnectionMemory measures what an idle DPS device costs the
// server: connected over TLS, subscribed, after a PINGREQ. The clients run
// in a separate process so that only the server's heap and goroutine
// stacks are counted.
func TestIdleConnectionMemory(t *testing.T) {
	measureIdle(t, "dps", Config{}, nil)
}

// TestIdleX509ConnectionMemory is the same for a DPS device that
// registers by certificate: no password, a TLS client certificate the
// session keeps for its requests.
func TestIdleX509ConnectionMemory(t *testing.T) {
	measureIdle(t, "dps-x509", Config{}, testcerts.Valid(t, "mem-ca", nil, true, testNow))
}

// TestIdleHubConnectionMemory is the same for IoT Hub devices, each
// authenticated (with an expiry timer), subscribed to its C2D topic and
// idle after one QoS 1 telemetry message.
func TestIdleHubConnectionMemory(t *testing.T) {
	skipUnmeasurable(t)
	measureIdle(t, "hub", memHubConfig(t, func(int) *hub.Authentication {
		return &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}}
	}, nil), nil)
}

// TestIdleHubBareConnectionMemory is the same for IoT Hub devices that
// send nothing after CONNECT, as `berth bench connect`'s devices (and any
// device between its connection and its first message) do.
func TestIdleHubBareConnectionMemory(t *testing.T) {
	skipUnmeasurable(t)
	measureIdle(t, "hub-bare", memHubConfig(t, func(int) *hub.Authentication {
		return &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}}
	}, nil), nil)
}

// TestIdleHubX509ConnectionMemory is the same for certificateAuthority
// devices that connect with a certificate (the expiry timer runs to the
// certificate's end).
func TestIdleHubX509ConnectionMemory(t *testing.T) {
	skipUnmeasurable(t)
	ca := testcerts.Valid(t, "mem-ca", nil, true, testNow)
	measureIdle(t, "hub-x509", memHubConfig(t, func(int) *hub.Authentication {
		return &hub.Authentication{Type: hub.AuthCertificateAuthority}
	}, staticTrust{ca.Cert}), ca)
}

// memHubConfig is a hub of memDevices devices authenticated by auth(i),
// with the twin, method and C2D services wired as the server wires them:
// the session is attached to Links and its C2D subscription looks at the
// (empty) queue.
func memHubConfig(t *testing.T, auth func(i int) *hub.Authentication, trust hub.CATrust) Config {
	st := memstore.New()
	clock := func() time.Time { return testNow }
	reg := hub.NewRegistry(st, clock)
	if trust != nil {
		reg.SetCATrust(trust)
	}
	for i := range memDevices {
		if _, err := reg.Create(context.Background(), hubName, &hub.Device{DeviceID: memDeviceID(i), Authentication: auth(i)}); err != nil {
			t.Fatal(err)
		}
	}
	return Config{Hub: &HubConfig{Name: hubName, Now: clock, Services: hub.NewServices(st, reg, &discardSink{}, clock, nil)}}
}

func memDeviceID(i int) string { return "mem-" + strconv.Itoa(i) }

// skipUnmeasurable skips a memory budget where it cannot be measured,
// saying why: make test runs these tests in a step of their own, without
// -race.
func skipUnmeasurable(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("memory budget not measured with -short (make test measures it in its non-race step)")
	}
	if raceEnabled {
		t.Skip("memory budget not measured under -race, which inflates memory (make test measures it in its non-race step)")
	}
}

// measureIdle connects memDevices clients of kind and checks the idle
// cost against its budget. deviceCA, for the -x509 kinds, issues each
// client's certificate (CN = its device ID), in the helper process.
func measureIdle(t *testing.T, kind string, cfg Config, deviceCA *testcerts.Cert) {
	skipUnmeasurable(t)
	const n = memDevices
	cert, _ := testCert(t)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(cfg, &fakeDPS{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(tls.NewListener(ln, serverTLS(cert))) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})
	var env []string
	if deviceCA != nil {
		env = append(env, envMemDeviceCA+"="+deviceCA.PEM()+deviceCA.KeyPEM(t))
	}

	// One warm-up run fills the server's pools and the runtime's caches.
	runClients(t, kind, ln.Addr().String(), caPEM, env, 5, func() {
		waitFor(t, "warm-up connections", func() bool { return srv.ConnCount() == 5 })
	})
	waitFor(t, "warm-up connections to end", func() bool { return srv.ConnCount() == 0 })

	var before, after runtime.MemStats
	settle := func(m *runtime.MemStats) {
		for range 4 {
			// Each GC may halve a stack that grew; a long-running
			// server gets there by itself.
			runtime.GC()
		}
		runtime.ReadMemStats(m)
	}
	settle(&before)
	goroutinesBefore, goroutines := runtime.NumGoroutine(), 0
	runClients(t, kind, ln.Addr().String(), caPEM, env, n, func() {
		waitFor(t, "connections", func() bool { return srv.ConnCount() == n })
		if runtime.GOOS == "linux" {
			// Each goes to the idle poller after idleLinger of silence.
			waitFor(t, "idle connections parked", func() bool { return srv.parkedConns() == n })
		}
		settle(&after)
		goroutines = runtime.NumGoroutine() - goroutinesBefore
		heapprofile.Write(t)
	})
	heap := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	// With no goroutine per idle connection the stacks may shrink
	// between the two readings (the warm-up's goroutines gone): a
	// negative figure must not hide heap growth.
	stack := max((int64(after.StackInuse)-int64(before.StackInuse))/n, 0)
	perConn := float64(goroutines) / float64(n)
	t.Logf("idle %s connection over TLS: %d bytes (heap %d, stack %d; %.2f goroutines)", kind, heap+stack, heap, stack, perConn)
	budget := int64(idleBudget)
	if strings.HasSuffix(kind, "-x509") {
		budget = idleBudgetX509
	}
	if runtime.GOOS == "linux" {
		// The idle poller holds every idle connection without a
		// goroutine (conn.maybePark).
		if perConn > 0.05 {
			t.Errorf("%.2f goroutines per idle connection; want none", perConn)
		}
	} else {
		budget += idleGoroutineBudget
	}
	if heap+stack > budget {
		t.Errorf("an idle connection costs %d bytes; the budget is %d", heap+stack, budget)
	}
}

// runClients starts the helper process with n clients, calls idle while
// they are connected, then stops them.
func runClients(t *testing.T, kind, addr string, caPEM []byte, env []string, n int, idle func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryClientHelper$")
	cmd.Env = append(os.Environ(), envMemAddr+"="+addr, envMemCA+"="+string(caPEM), envMemN+"="+strconv.Itoa(n), envMemKind+"="+kind)
	cmd.Env = append(cmd.Env, env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if sc.Text() == "ready" {
				ready <- nil
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ready <- fmt.Errorf("helper ended before ready: %v", sc.Err())
	}()
	select {
	case err := <-ready:
		if err != nil {
			_ = cmd.Wait()
			t.Fatalf("%v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("helper not ready after 30s")
	}
	idle()
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v\n%s", err, stderr.String())
	}
}

// TestMemoryClientHelper is the client side of TestIdleConnectionMemory,
// run in its own process; it does nothing in a normal test run.
func TestMemoryClientHelper(t *testing.T) {
	addr := os.Getenv(envMemAddr)
	if addr == "" {
		t.Skip("helper process of TestIdleConnectionMemory")
	}
	n, err := strconv.Atoi(os.Getenv(envMemN))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(os.Getenv(envMemCA))) {
		t.Fatal("bad CA")
	}
	var deviceCA *testcerts.Cert
	if v := os.Getenv(envMemDeviceCA); v != "" {
		pair, err := tls.X509KeyPair([]byte(v), []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		deviceCA = &testcerts.Cert{Cert: pair.Leaf, Key: pair.PrivateKey.(*ecdsa.PrivateKey)}
	}
	conns := make([]net.Conn, 0, n)
	for i := range n {
		hello, want := memHello(t, os.Getenv(envMemKind), i)
		cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
		if deviceCA != nil {
			cfg.Certificates = []tls.Certificate{testcerts.Valid(t, memClientID(os.Getenv(envMemKind), i), deviceCA, false, testNow).TLS()}
		}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		_, err = io.ReadFull(c, got)
		if err == nil && got[2] == 1 && strings.HasPrefix(os.Getenv(envMemKind), "hub") {
			// Session present: the warm-up run connected this device
			// with CleanSession 0 too.
			got[2] = 0
		}
		if n := len(got); err == nil && n >= 6 && bytes.Equal(got[n-6:], []byte{0xd0, 0, 0x40, 2, 0, 2}) {
			// The PUBACK goes out once the message is durable, on the
			// telemetry pipeline's writer; the PINGRESP at once: either
			// may come first.
			copy(got[n-6:], []byte{0x40, 2, 0, 2, 0xd0, 0})
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("answers % x, %v; want % x", got, err, want)
		}
		conns = append(conns, c)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
}

// memClientID is the registration or device ID of memory-test client i.
func memClientID(kind string, i int) string {
	if strings.HasPrefix(kind, "dps") {
		return "dev-1"
	}
	return memDeviceID(i)
}

// memHello is what memory-test client i sends, and the server's answers.
// The -x509 kinds send no password: their certificate authenticates.
func memHello(t *testing.T, kind string, i int) (hello, want []byte) {
	kind, x509 := strings.CutSuffix(kind, "-x509")
	var b bytes.Buffer
	enc := func(encode func(*bytes.Buffer) error) {
		if err := encode(&b); err != nil {
			t.Fatal(err)
		}
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	switch kind {
	case "dps":
		enc(connectPacket(memClientID(kind, i), dpsUsername(memClientID(kind, i)), "", 0).ConnectEncode)
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
			Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#", Qos: 1}}}
		enc(sub.SubscribeEncode)
		enc(ping.PingreqEncode)
		// CONNACK rc 0, SUBACK granting 1, PINGRESP.
		return b.Bytes(), []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0xd0, 0}
	case "hub", "hub-bare":
		id := memClientID(kind, i)
		tok := ""
		if !x509 {
			var err error
			if tok, err = sas.SignEncoded(hubName+"/devices/"+id, indivKey, "", testNow.Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		connect := connectPacket(id, hubUsername(id), tok, 0)
		connect.Connect.Clean = false
		enc(connect.ConnectEncode)
		if kind == "hub-bare" {
			// CONNACK rc 0.
			return b.Bytes(), []byte{0x20, 2, 0, 0}
		}
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
			Filters: packets.Subscriptions{{Filter: "devices/" + id + "/messages/devicebound/#", Qos: 1}}}
		enc(sub.SubscribeEncode)
		pub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, PacketID: 2, ProtocolVersion: 4,
			TopicName: "devices/" + id + "/messages/events/%24.ct=application%2Fjson&n=1", Payload: []byte(`{"t":21}`)}
		enc(pub.PublishEncode)
		enc(ping.PingreqEncode)
		// CONNACK rc 0, SUBACK granting 1, PUBACK 2, PINGRESP.
		return b.Bytes(), []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0x40, 2, 0, 2, 0xd0, 0}
	}
	t.Fatalf("unknown client kind %q", kind)
	return nil, nil
}
