package sqlite_test

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/sqlite"
	"github.com/berth-iot/berth/store/storetest"
)

func TestConformance(t *testing.T) {
	// One database file per subtest, the same one each time that subtest
	// opens, so the suite can close and reopen it.
	var mu sync.Mutex
	paths := map[*testing.T]string{}
	storetest.Run(t, func(t *testing.T) store.Store {
		mu.Lock()
		p, ok := paths[t]
		if !ok {
			p = filepath.Join(t.TempDir(), "berth.db")
			paths[t] = p
		}
		mu.Unlock()
		s, err := sqlite.Open(p)
		if err != nil {
			t.Fatalf("Open(%s): %v", p, err)
		}
		return s
	})
}
