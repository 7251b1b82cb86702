package bench

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/berth-iot/berth/internal/localconf"
)

// A cluster target spreads its devices over its nodes, i % N: each device
// reaches its node's listeners with the cluster's one DPS and hub names.
func TestTargetSpreadsDevicesOverItsNodes(t *testing.T) {
	base := &Target{IDScope: "0ne1", GlobalEndpoint: "dps.example", HubHostName: "hub.example",
		MQTTAddress: "10.0.0.1:8883", HTTPSAddress: "10.0.0.1:443", AMQPAddress: "10.0.0.1:5671"}
	if err := base.AddNodes([]string{"10.0.0.2", "10.0.0.3", "10.0.0.1"}); err != nil {
		t.Fatal(err)
	}
	if base.NodeCount() != 3 {
		t.Fatalf("NodeCount = %d, want 3 (the first node given again is not another)", base.NodeCount())
	}
	for i, want := range []string{"10.0.0.1:8883", "10.0.0.2:8883", "10.0.0.3:8883", "10.0.0.1:8883"} {
		d := base.ForDevice(i)
		if d.MQTTAddress != want || d.HubAddress("hub.example") != want {
			t.Errorf("device %d: MQTT %s, hub %s; want %s", i, d.MQTTAddress, d.HubAddress("hub.example"), want)
		}
		if d.GlobalEndpoint != "dps.example" || d.HubHostName != "hub.example" {
			t.Errorf("device %d: names %s, %s", i, d.GlobalEndpoint, d.HubHostName)
		}
	}
	if got := base.ForDevice(1).HTTPSAddress; got != "10.0.0.2:443" {
		t.Errorf("device 1 HTTPS %s", got)
	}
	ep := HubEndpoint(base, "hub.example")
	if ep.ForDevice(2).Address != "10.0.0.3:8883" || ep.ForDevice(2).ServerName != "hub.example" {
		t.Errorf("hub endpoint of device 2: %s (%s)", ep.ForDevice(2).Address, ep.ForDevice(2).ServerName)
	}
	amqp, err := HubEndpointOver(base, "hub.example", TransportAMQP)
	if err != nil {
		t.Fatal(err)
	}
	if got := amqp.ForDevice(1).Address; got != "10.0.0.2:5671" {
		t.Errorf("AMQP endpoint of device 1: %s", got)
	}
}

// --nodes takes a node's data directory (its client.json, which must be of
// the same cluster) as well as a host.
func TestAddNodesFromDataDirectories(t *testing.T) {
	base := &Target{IDScope: "0ne1", HubHostName: "hub.example", MQTTAddress: "127.0.0.1:8883", HTTPSAddress: "127.0.0.1:443"}
	dir := t.TempDir()
	write := func(info localconf.Info) {
		if err := localconf.Write(dir, &info); err != nil {
			t.Fatal(err)
		}
	}
	write(localconf.Info{IDScope: "0ne1", HubHostName: "hub.example", MQTTAddress: "127.0.0.2:9999", HTTPSAddress: "127.0.0.2:4443"})
	if err := base.AddNodes([]string{dir}); err != nil {
		t.Fatal(err)
	}
	want := []Node{{MQTTAddress: "127.0.0.1:8883", HTTPSAddress: "127.0.0.1:443"}, {MQTTAddress: "127.0.0.2:9999", HTTPSAddress: "127.0.0.2:4443"}}
	if !reflect.DeepEqual(base.Nodes, want) {
		t.Fatalf("Nodes = %+v, want %+v", base.Nodes, want)
	}
	other := &Target{IDScope: "0ne2", HubHostName: "hub.example", MQTTAddress: "127.0.0.1:8883", HTTPSAddress: "127.0.0.1:443"}
	if err := other.AddNodes([]string{dir}); err == nil {
		t.Fatal("a node of another cluster (ID scope) was accepted")
	}
	if err := other.AddNodes([]string{filepath.Join(dir, "nope") + ":1"}); err == nil {
		t.Fatal("a host:port was accepted (the ports are the first node's)")
	}
	_ = os.Remove(dir)
}

func TestParseLoadAvg(t *testing.T) {
	if got := parseLoadAvg([]byte("7.79 8.40 4.44 3/512 2441\n")); !reflect.DeepEqual(got, []float64{7.79, 8.4, 4.44}) {
		t.Fatalf("got %v", got)
	}
	if got := parseLoadAvg([]byte("x")); got != nil {
		t.Fatalf("got %v for garbage", got)
	}
}

func TestParseStatCPU(t *testing.T) {
	// utime 250 and stime 50 ticks: 3 s; the name has a space and a ')'.
	stat := "4242 (berth (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 100 0 0\n"
	got, err := parseStatCPU([]byte(stat))
	if err != nil || got != 3*time.Second {
		t.Fatalf("got %v, %v; want 3s", got, err)
	}
	if _, err := parseStatCPU([]byte("4242 (berth) S 1")); err == nil {
		t.Fatal("a short line was read")
	}
	// This process has used some CPU by now.
	if c, err := ReadCPU(os.Getpid()); err != nil || c < 0 {
		t.Fatalf("ReadCPU(self) = %v, %v", c, err)
	}
}
