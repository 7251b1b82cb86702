package mqtt

import (
	"bufio"
	"bytes"
	"context"
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
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/store/memstore"
)

// Environment of the client helper process.
const (
	envMemAddr = "BERTH_MQTT_MEMTEST_ADDR"
	envMemCA   = "BERTH_MQTT_MEMTEST_CA"
	envMemN    = "BERTH_MQTT_MEMTEST_N"
	// envMemKind is "dps" or "hub": which session the clients open.
	envMemKind = "BERTH_MQTT_MEMTEST_KIND"
)

// idleBudget is the bench target: server memory per idle connected
// device, TLS included.
const idleBudget = 16 * 1024

// memDevices is how many devices the idle-memory tests connect.
const memDevices = 500

// TestIdleConnectionMemory measures what an idle DPS device costs the
// server: connected over TLS, subscribed, after a PINGREQ. The clients run
// in a separate process so that only the server's heap and goroutine
// stacks are counted.
func TestIdleConnectionMemory(t *testing.T) {
	measureIdle(t, "dps", Config{})
}

// TestIdleHubConnectionMemory is the same for IoT Hub devices, each
// authenticated (with an expiry timer), subscribed to its C2D topic and
// idle after one QoS 1 telemetry message.
func TestIdleHubConnectionMemory(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("memory measurement")
	}
	st := memstore.New()
	clock := func() time.Time { return testNow }
	reg := hub.NewRegistry(st, clock)
	for i := range memDevices {
		if _, err := reg.Create(context.Background(), hubName, &hub.Device{DeviceID: memDeviceID(i),
			Authentication: &hub.Authentication{Type: "sas", SymmetricKey: &hub.SymmetricKey{PrimaryKey: indivKey, SecondaryKey: secondaryKey}}}); err != nil {
			t.Fatal(err)
		}
	}
	// With the twin, method and C2D services wired as the server wires
	// them: the session is attached to Links and its C2D subscription
	// looked at the (empty) queue.
	links := hub.NewLinks()
	measureIdle(t, "hub", Config{Hub: &HubConfig{Name: hubName, Registry: reg, Sink: &discardSink{}, Now: clock,
		Links: links, Twins: hub.NewTwins(st, reg, links), CloudToDevice: hub.NewCloudToDevice(st, reg, links, nil)}})
}

func memDeviceID(i int) string { return "mem-" + strconv.Itoa(i) }

func measureIdle(t *testing.T, kind string, cfg Config) {
	if testing.Short() {
		t.Skip("memory measurement")
	}
	if raceEnabled {
		t.Skip("the race detector inflates memory")
	}
	const n = memDevices
	cert, _ := testCert(t)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := New(cfg, &fakeDPS{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]})

	// One warm-up run fills the server's pools and the runtime's caches.
	runClients(t, kind, ln.Addr().String(), caPEM, 5, func() {
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
	runClients(t, kind, ln.Addr().String(), caPEM, n, func() {
		waitFor(t, "connections", func() bool { return srv.ConnCount() == n })
		settle(&after)
	})
	heap := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	stack := (int64(after.StackInuse) - int64(before.StackInuse)) / n
	t.Logf("idle %s connection over TLS: %d bytes (heap %d, stack %d)", kind, heap+stack, heap, stack)
	if heap+stack > idleBudget {
		t.Errorf("an idle connection costs %d bytes; the budget is %d", heap+stack, idleBudget)
	}
}

// runClients starts the helper process with n clients, calls idle while
// they are connected, then stops them.
func runClients(t *testing.T, kind, addr string, caPEM []byte, n int, idle func()) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestMemoryClientHelper$")
	cmd.Env = append(os.Environ(), envMemAddr+"="+addr, envMemCA+"="+string(caPEM), envMemN+"="+strconv.Itoa(n), envMemKind+"="+kind)
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
	conns := make([]net.Conn, 0, n)
	for i := range n {
		hello, want := memHello(t, os.Getenv(envMemKind), i)
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(hello); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(want))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, want) {
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

// memHello is what memory-test client i sends, and the server's answers.
func memHello(t *testing.T, kind string, i int) (hello, want []byte) {
	var b bytes.Buffer
	enc := func(encode func(*bytes.Buffer) error) {
		if err := encode(&b); err != nil {
			t.Fatal(err)
		}
	}
	ping := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}
	switch kind {
	case "dps":
		enc(connectPacket("dev-1", dpsUsername("dev-1"), "", 0).ConnectEncode)
		sub := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1, ProtocolVersion: 4,
			Filters: packets.Subscriptions{{Filter: "$dps/registrations/res/#", Qos: 1}}}
		enc(sub.SubscribeEncode)
		enc(ping.PingreqEncode)
		// CONNACK rc 0, SUBACK granting 1, PINGRESP.
		return b.Bytes(), []byte{0x20, 2, 0, 0, 0x90, 3, 0, 1, 1, 0xd0, 0}
	case "hub":
		id := memDeviceID(i)
		tok, err := sas.SignEncoded(hubName+"/devices/"+id, indivKey, "", testNow.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		connect := connectPacket(id, hubUsername(id), tok, 0)
		connect.Connect.Clean = false
		enc(connect.ConnectEncode)
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
