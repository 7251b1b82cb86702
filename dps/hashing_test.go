package dps

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// realisticIDs returns n registration IDs of the shapes fleets use:
// sequential names, MAC addresses and UUIDs (shape "seq", "mac", "uuid").
func realisticIDs(shape string, n int) []string {
	rng := rand.New(rand.NewPCG(17, 2))
	ids := make([]string, n)
	for i := range ids {
		switch shape {
		case "seq":
			ids[i] = fmt.Sprintf("sensor-%05d", i)
		case "mac":
			// One vendor prefix, counting up, as a production line issues them.
			ids[i] = fmt.Sprintf("a4-cf-12-%02x-%02x-%02x", byte(i>>16), byte(i>>8), byte(i))
		default:
			b := make([]byte, 16)
			for j := range b {
				b[j] = byte(rng.Uint32())
			}
			b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
			ids[i] = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
		}
	}
	return ids
}

func weighted(weights ...int) []LinkedHub {
	hubs := make([]LinkedHub, len(weights))
	for i, w := range weights {
		hubs[i] = LinkedHub{Name: fmt.Sprintf("hub-%d.example.net", i), AllocationWeight: w, ApplyAllocationPolicy: true}
	}
	return hubs
}

// Each hub's share of 100,000 IDs of each shape is its weight's share of
// the total within 2% of that share.
func TestHashedPickFollowsWeights(t *testing.T) {
	worst := 0.0
	for _, shape := range []string{"seq", "mac", "uuid"} {
		ids := realisticIDs(shape, 100_000)
		for _, weights := range [][]int{{1, 1}, {1, 3}, {2, 3, 5}, {1, 1, 1, 1}, {4, 0, 1}} {
			hubs := weighted(weights...)
			counts := map[string]int{}
			for _, id := range ids {
				counts[hashedPick(hubs, id)]++
			}
			total := 0
			for _, w := range weights {
				total += w
			}
			for i, h := range hubs {
				want := float64(weights[i]) / float64(total)
				got := float64(counts[h.Name]) / float64(len(ids))
				if want > 0 {
					worst = max(worst, math.Abs(got-want)/want)
				}
				if got < want*0.98 || got > want*1.02 {
					t.Errorf("%s IDs, weights %v: hub %d got %.4f of devices, want %.4f ±2%%", shape, weights, i, got, want)
				}
			}
		}
	}
	t.Logf("largest deviation of a hub's share from its weight: %.2f%%", worst*100)
}

// The 13 IDs that FNV-1a modulo the total weight sent all to one of two
// equal hubs now spread over both.
func TestHashedPickSpreadsShortIDs(t *testing.T) {
	hubs := weighted(1, 1)
	counts := map[string]int{}
	for _, id := range []string{"sensor-13", "sensor-35", "sensor-02", "sensor-20", "sensor-11", "sensor-31", "sensor-04",
		"sensor-22", "sensor-40", "sensor-15", "sensor-33", "sensor-51", "sensor-06"} {
		counts[hashedPick(hubs, id)]++
	}
	if len(counts) != 2 || counts[hubs[0].Name] < 3 || counts[hubs[1].Name] < 3 {
		t.Errorf("13 sensors over two equal hubs: %v", counts)
	}
}

// Adding a hub moves only the devices it takes, all onto it, about its
// share; the pick does not depend on the order of the hub list or the
// ID's case; all weights 0 spread over every hub.
func TestHashedPickStableAndMinimalMovement(t *testing.T) {
	ids := append(realisticIDs("seq", 30_000), realisticIDs("uuid", 30_000)...)
	before := weighted(1, 3, 2)
	after := append(weighted(1, 3, 2), LinkedHub{Name: "added.example.net", AllocationWeight: 2, ApplyAllocationPolicy: true})
	reversed := []LinkedHub{before[2], before[1], before[0]}
	moved := 0
	for _, id := range ids {
		a, b := hashedPick(before, id), hashedPick(after, id)
		if hashedPick(reversed, id) != a || hashedPick(before, id) != a {
			t.Fatalf("%s: the pick depends on the hub order or is not stable", id)
		}
		if hashedPick(before, fmt.Sprintf("%X", id)) != hashedPick(before, fmt.Sprintf("%x", id)) {
			t.Fatalf("%s: the pick depends on case", id)
		}
		if a != b {
			moved++
			if b != "added.example.net" {
				t.Fatalf("%s moved from %s to %s, not to the added hub", id, a, b)
			}
		}
	}
	// The added hub's share is 2/8; moving more would be churn.
	if got := float64(moved) / float64(len(ids)); got < 0.25*0.97 || got > 0.25*1.03 {
		t.Errorf("adding a hub of weight 2 to 1+3+2 moved %.4f of devices, want 0.25", got)
	}
	zero := weighted(0, 0, 0)
	seen := map[string]bool{}
	for _, id := range ids[:300] {
		seen[hashedPick(zero, id)] = true
	}
	if len(seen) != 3 {
		t.Errorf("all weights 0: only %v used", seen)
	}
}

func BenchmarkHashedPick(b *testing.B) {
	hubs := weighted(1, 3, 2, 1)
	for b.Loop() {
		hashedPick(hubs, "sensor-00042")
	}
}
