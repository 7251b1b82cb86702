package hub_test

import (
	"context"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/berth-iot/berth/hub"
	"github.com/berth-iot/berth/internal/testcerts"
	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/memstore"
	"github.com/berth-iot/berth/store/sqlite"
)

// Hot paths of the hub domain: a device's reported PATCH, a service's
// desired PATCH (which notifies the device's live link), the twin document
// checks alone, one C2D message's life, and X.509 device authentication.
// The figures are in docs/benchmarks.md ("Twins, methods, C2D and X.509").

const benchHub = "bench.berth.test"

// benchNow is a fixed clock, as in the tests: it keeps every $metadata
// timestamp and C2D expiry the same length from one run to the next.
var benchNow = time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC)

// nopLink is a live device connection that takes every push and does
// nothing: the notification path (Links.Lookup, rendering the patch) runs,
// no network does.
type nopLink struct{}

func (nopLink) DesiredPatch(int64, []byte) {}
func (nopLink) MethodsSubscribed() bool    { return true }
func (nopLink) CloudToDevicePending()      {}
func (nopLink) Close(hub.CloseReason)      {}
func (nopLink) InvokeMethod(context.Context, string, []byte) (int, []byte, error) {
	return 200, nil, nil
}

// benchStores are the stores a hub benchmark runs on: the in-memory one
// (the domain's own cost) and SQLite on a temp file (what berth serve
// runs: synchronous=FULL, one fsync per write transaction).
var benchStores = []struct {
	name string
	open func(b *testing.B) store.Store
}{
	{"memstore", func(*testing.B) store.Store { return memstore.New() }},
	{"sqlite", func(b *testing.B) store.Store {
		s, err := sqlite.Open(filepath.Join(b.TempDir(), "bench.db"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		return s
	}},
}

type benchHubEnv struct {
	st    store.Store
	reg   *hub.Registry
	links *hub.Links
	twins *hub.Twins
	c2d   *hub.CloudToDevice
}

// newBenchHubEnv creates the device "dev-1" with a live no-op link.
func newBenchHubEnv(b *testing.B, st store.Store) *benchHubEnv {
	b.Helper()
	e := &benchHubEnv{st: st, links: hub.NewLinks()}
	e.reg = hub.NewRegistry(st, func() time.Time { return benchNow })
	e.twins = hub.NewTwins(st, e.reg, e.links)
	e.c2d = hub.NewCloudToDevice(st, e.reg, e.links, nil)
	if _, err := e.reg.Create(context.Background(), benchHub, &hub.Device{DeviceID: "dev-1"}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(attachLink(e.links, benchHub, "dev-1", nopLink{}))
	return e
}

// reportCPU reports the process's CPU time (user + system) per operation
// since cpu0: on a shared machine wall time per op follows the other
// tenants' load, CPU time much less so.
func reportCPU(b *testing.B, cpu0 time.Duration) {
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// smallReported is what a typical device reports: a handful of values.
func smallReported(i int) []byte {
	return fmt.Appendf(nil, `{"battery":%d,"temperature":%d.5,"rssi":-%d,"fw":{"version":"1.4.2","state":"running"}}`, i%100, 15+i%10, 40+i%50)
}

// largeTwinSection is a ~16 KB section: 160 nested sensor descriptions,
// the shape of a twin that carries a device's configuration.
func largeTwinSection(seed int) []byte {
	var sb strings.Builder
	sb.WriteString(`{"sensors":{`)
	for i := range 160 {
		if i > 0 {
			sb.WriteByte(',')
		}
		fmt.Fprintf(&sb, `"s%03d":{"name":"sensor-%03d","unit":"celsius","min":-40,"max":125,"cal":1.%04d,"enabled":true}`, i, i, (seed+i)%10000)
	}
	sb.WriteString(`},"site":"plant 42","rev":`)
	fmt.Fprintf(&sb, "%d}", seed)
	return []byte(sb.String())
}

func BenchmarkTwinPatchReported(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			e := newBenchHubEnv(b, s.open(b))
			ctx := context.Background()
			bodies := make([][]byte, 64)
			for i := range bodies {
				bodies[i] = smallReported(i)
			}
			b.ReportAllocs()
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				if _, err := e.twins.PatchReported(ctx, benchHub, "dev-1", bodies[i%len(bodies)]); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
		})
	}
}

// BenchmarkTwinPatchReportedParallel is BenchmarkTwinPatchReported with
// several devices reporting at once, each its own twin: b.N patches in
// all. The patches of different devices are concurrent store writes, which
// SQLite's group commit can share one transaction and one fsync between.
func BenchmarkTwinPatchReportedParallel(b *testing.B) {
	for _, s := range benchStores {
		for _, devices := range []int{8, 32} {
			b.Run(fmt.Sprintf("%s/devices-%d", s.name, devices), func(b *testing.B) {
				e := newBenchHubEnv(b, s.open(b))
				ctx := context.Background()
				ids := make([]string, devices)
				for i := range ids {
					ids[i] = fmt.Sprintf("dev-%d", i+1)
					if i == 0 {
						continue
					}
					if _, err := e.reg.Create(ctx, benchHub, &hub.Device{DeviceID: ids[i]}); err != nil {
						b.Fatal(err)
					}
					b.Cleanup(attachLink(e.links, benchHub, ids[i], nopLink{}))
				}
				bodies := make([][]byte, 64)
				for i := range bodies {
					bodies[i] = smallReported(i)
				}
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				var next atomic.Int64
				var wg sync.WaitGroup
				for _, id := range ids {
					wg.Go(func() {
						for {
							i := int(next.Add(1) - 1)
							if i >= b.N {
								return
							}
							if _, err := e.twins.PatchReported(ctx, benchHub, id, bodies[i%len(bodies)]); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				reportCPU(b, cpu0)
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "patches/s")
			})
		}
	}
}

func BenchmarkTwinPatchDesired(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			e := newBenchHubEnv(b, s.open(b))
			ctx := context.Background()
			bodies := make([][]byte, 64)
			for i := range bodies {
				bodies[i] = fmt.Appendf(nil, `{"properties":{"desired":{"telemetryInterval":%d,"mode":"eco","limits":{"high":%d}}}}`, 10+i, 80+i)
			}
			b.ReportAllocs()
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				if _, err := e.twins.Patch(ctx, benchHub, "dev-1", bodies[i%len(bodies)], ""); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
		})
	}
}

// BenchmarkTwinValidate is the document checks alone (decode with
// json.Number, key and value rules, size), as DPS runs them on an
// enrollment's initial twin.
func BenchmarkTwinValidate(b *testing.B) {
	for _, c := range []struct {
		name string
		doc  []byte
	}{{"small", smallReported(7)}, {"16KiB", largeTwinSection(7)}} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(c.doc)))
			b.ReportAllocs()
			for b.Loop() {
				if err := hub.ValidateInitialTwin(nil, c.doc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkTwinMerge is a reported PATCH on memstore, where the store
// costs a map access: what is left is decoding the stored twin, checking
// and merging the patch, stamping $metadata and encoding the twin again.
// "small-into-16KiB" is the common case of a large twin: the device
// reports a few values and the whole record is rewritten.
func BenchmarkTwinMerge(b *testing.B) {
	for _, c := range []struct {
		name    string
		initial []byte // reported before the loop
		patch   func(i int) []byte
	}{
		{"small-into-small", smallReported(0), smallReported},
		{"small-into-16KiB", largeTwinSection(0), smallReported},
		{"16KiB-into-16KiB", largeTwinSection(0), largeTwinSection},
	} {
		b.Run(c.name, func(b *testing.B) {
			e := newBenchHubEnv(b, memstore.New())
			ctx := context.Background()
			if _, err := e.twins.PatchReported(ctx, benchHub, "dev-1", c.initial); err != nil {
				b.Fatal(err)
			}
			patches := make([][]byte, 16)
			for i := range patches {
				patches[i] = c.patch(i + 1)
			}
			// The stored record (props, $metadata, tags, desired) is what
			// each patch decodes and encodes again.
			rec, err := e.st.Get(ctx, store.KindTwin, benchHub+"/dev-1")
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(patches[0])))
			b.ReportAllocs()
			cpu0 := cpuTime()
			for i := 0; b.Loop(); i++ {
				if _, err := e.twins.PatchReported(ctx, benchHub, "dev-1", patches[i%len(patches)]); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0)
			b.ReportMetric(float64(len(rec.Data)), "stored-B")
		})
	}
}

// BenchmarkC2DCycle is one cloud-to-device message's life: Send (the
// service), Receive under a lock (the device's delivery), Complete (its
// PUBACK). On SQLite that is three write transactions.
func BenchmarkC2DCycle(b *testing.B) {
	for _, s := range benchStores {
		b.Run(s.name, func(b *testing.B) {
			e := newBenchHubEnv(b, s.open(b))
			ctx := context.Background()
			body := []byte(`{"command":"setInterval","value":30}`)
			b.ReportAllocs()
			for b.Loop() {
				m := &hub.CloudMessage{MessageID: "", Ack: "none", Body: body,
					App: []hub.Property{{Name: "kind", Value: "config"}}}
				if _, err := e.c2d.Send(ctx, benchHub, "dev-1", m); err != nil {
					b.Fatal(err)
				}
				got, err := e.c2d.Receive(ctx, benchHub, "dev-1", 1, hub.DefaultLockTimeout)
				if err != nil || len(got) != 1 {
					b.Fatalf("receive: %d messages, %v", len(got), err)
				}
				if err := e.c2d.Complete(ctx, benchHub, "dev-1", got[0].LockToken); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

type benchTrust []*x509.Certificate

func (t benchTrust) TrustedCAs(context.Context) ([]*x509.Certificate, error) { return t, nil }

// BenchmarkAuthenticateDeviceCert is the hub's check of a TLS client chain
// once the handshake has verified possession of the key: a thumbprint
// compare for a selfSigned device, a chain build to a trusted root through
// the intermediate the device sent for a certificateAuthority device. The
// registry is on memstore: the store read is measured elsewhere.
func BenchmarkAuthenticateDeviceCert(b *testing.B) {
	ctx := context.Background()
	reg := hub.NewRegistry(memstore.New(), func() time.Time { return benchNow })
	root := testcerts.Valid(b, "root", nil, true, benchNow)
	inter := testcerts.Valid(b, "inter", root, true, benchNow)
	self := testcerts.Valid(b, "self-1", nil, false, benchNow)
	caDev := testcerts.Valid(b, "ca-1", inter, false, benchNow)
	s1 := sha1.Sum(self.Cert.Raw)
	tp := strings.ToUpper(hex.EncodeToString(s1[:]))
	for _, d := range []*hub.Device{
		{DeviceID: "self-1", Authentication: &hub.Authentication{Type: hub.AuthSelfSigned, X509Thumbprint: &hub.X509Thumbprint{PrimaryThumbprint: &tp}}},
		{DeviceID: "ca-1", Authentication: &hub.Authentication{Type: hub.AuthCertificateAuthority}},
	} {
		if _, err := reg.Create(ctx, benchHub, d); err != nil {
			b.Fatal(err)
		}
	}
	reg.SetCATrust(benchTrust{root.Cert})
	for _, c := range []struct {
		name, id string
		chain    []*x509.Certificate
	}{
		{"selfSigned", "self-1", testcerts.Chain(self)},
		{"certificateAuthority", "ca-1", testcerts.Chain(caDev, inter)},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := reg.AuthenticateDeviceCert(ctx, benchHub, c.id, c.chain); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
