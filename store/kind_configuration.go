package store

// KindConfiguration holds a hub's automatic device configurations
// (docs/configurations.md): key = lower(hub) + "/" + configuration ID,
// index = lower(hub). A kind of its own file, so that it is added to the
// list in store.go without touching it.
const KindConfiguration Kind = "configuration"
