package postgres_test

import (
	"context"
	"testing"
	"time"

	"github.com/berth-iot/berth/store"
	"github.com/berth-iot/berth/store/postgres"
)

// A change of a config record committed through one store (another berth
// node) reaches a Watch on another store of the same schema, and only
// there: a store of another schema hears nothing, and a change of an
// unwatched kind announces nothing.
func TestWatchAnnouncesConfigChangesOfItsSchema(t *testing.T) {
	admin := adminPool(t)
	schema, other := randomSchema(t), randomSchema(t)
	dropSchemaAtCleanup(t, admin, schema)
	dropSchemaAtCleanup(t, admin, other)
	open := func(schema string) *postgres.Store {
		s, err := postgres.Open(t.Context(), testDSN(), postgres.WithSchema(schema))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
	writer, watcher, stranger := open(schema), open(schema), open(other)

	type change struct {
		kind store.Kind
		key  string
	}
	changes := make(chan change, 16)
	resyncs := make(chan struct{}, 16)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		watcher.Watch(ctx, func(k store.Kind, key string) { changes <- change{k, key} }, func() { resyncs <- struct{}{} })
	}()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-resyncs: // listening
	case <-time.After(30 * time.Second):
		t.Fatal("Watch never started listening")
	}

	bg := context.Background()
	if _, err := stranger.Put(bg, store.Record{Kind: store.KindConfig, Key: "elsewhere", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(bg, store.Record{Kind: store.KindDevice, Key: "h/d", Data: []byte(`{}`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(bg, store.Record{Kind: store.KindConfig, Key: "hubs", Data: []byte(`[]`)}, store.Cond{}); err != nil {
		t.Fatal(err)
	}
	if err := writer.Delete(bg, store.KindConfig, "hubs", ""); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		select {
		case c := <-changes:
			if c != (change{store.KindConfig, "hubs"}) {
				t.Fatalf("change %d: %+v, want config/hubs (the other schema's and the device's must not be announced)", i, c)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("change %d never announced", i)
		}
	}
}
