package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/berth-iot/berth/hub"
)

// Defaults for Config's zero values.
const (
	DefaultStreamName    = "BERTH_TELEMETRY"
	DefaultSubjectPrefix = "berth.telemetry"
	// DefaultMaxAge is IoT Hub's maximum retention for the built-in
	// endpoint (7 days; its default is 1). A self-hosted hub's consumers are
	// more often offline for a weekend than Azure Functions are, and disk is
	// the operator's to budget with MaxBytes.
	DefaultMaxAge = 7 * 24 * time.Hour
)

// Config says where the telemetry stream lives.
type Config struct {
	// URL is "" for an embedded, in-process nats-server, or the
	// comma-separated URLs of an external NATS server or cluster with
	// JetStream ("nats://a:4222,nats://b:4222").
	URL string
	// StoreDir is the embedded server's JetStream directory (e.g.
	// DATA_DIR/nats). Required when URL is "", ignored otherwise.
	StoreDir string
	// StreamName defaults to DefaultStreamName.
	StreamName string
	// SubjectPrefix defaults to DefaultSubjectPrefix; the stream captures
	// SubjectPrefix.>.
	SubjectPrefix string
	// MaxAge is the retention; 0 means DefaultMaxAge.
	MaxAge time.Duration
	// MaxBytes caps the stream, dropping the oldest messages; 0 means -1,
	// unlimited.
	MaxBytes int64
	// Replicas is the stream's replication on an external cluster; 0 means
	// 1. The embedded server is a single node and accepts only 1.
	Replicas int
	// ListenAddr, for the embedded server, is an optional host:port on
	// which other local programs (berth hub monitor-events, any NATS
	// client) may read the stream; "" keeps it in-process only. Use a
	// loopback address: the port is protected by Token, not by TLS.
	ListenAddr string
	// Token is the client token the embedded listener requires; required
	// with ListenAddr.
	Token string
	// ReadOnly opens an existing stream to read it (Subscribe), without
	// creating it or changing its limits.
	ReadOnly bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// maxAgeSet and maxBytesSet record that MaxAge and MaxBytes were given,
	// not defaulted: only then does a start change an existing stream's
	// limits (strengthen).
	maxAgeSet, maxBytesSet bool

	// noAtomic makes Open choose per-message publishes as if the server
	// lacked atomic batches, so tests cover that path on the embedded
	// server.
	noAtomic bool
	// serverSync runs the embedded server with SyncAlways and group
	// commit with atomic batches, as berth did before blockSyncer, so
	// the benchmarks can compare the two.
	serverSync bool
}

// SubscribeOptions selects the messages Subscribe delivers.
type SubscribeOptions struct {
	// Hub and DeviceID filter by hub host name and device; "" means any.
	Hub, DeviceID string
	// StartTime replays messages stored at or after it; zero means only
	// messages appended after Subscribe returns.
	StartTime time.Time
}

// Stream is berth's telemetry stream: a hub.TelemetrySink and a reader for
// monitor-events. It is safe for concurrent use.
type Stream struct {
	cfg Config
	log *slog.Logger
	ns  *server.Server // nil for an external server
	nc  *nats.Conn
	js  jetstream.JetStream
	// commit gathers concurrent Appends into atomic batches; nil when the
	// server or stream cannot take them (then each Append publishes on its
	// own, as before group commit) and for ReadOnly streams.
	commit *committer
	// blocks, for the embedded server, fsyncs the stream's message blocks
	// after each group of PubAcks (blocksync.go); nil when the server
	// syncs itself (an external server, or the embedded one with
	// SyncAlways).
	blocks *blockSyncer
	// atomic: the stream takes atomic batches (AppendBatch).
	atomic bool
	// Test hooks, set before the first Append: testHookPublish runs in the
	// committer before it publishes a group of n messages (a test can hold
	// it there to let Appends queue up); testHookBatch sees every atomic
	// batch's size and outcome.
	testHookPublish func(n int)
	testHookBatch   func(n int, err error)
	// testHookBatchMsg sees message i of an atomic batch (not the commit)
	// before it is sent; testRetryBudget, when set, replaces retryBudget.
	testHookBatchMsg func(i int, msg *nats.Msg)
	testRetryBudget  time.Duration
	// testHookReaderTry, when set, runs before each try to create a
	// reader's consumer; an error fails the try as if it got no answer.
	testHookReaderTry func(try int) error

	mu     sync.Mutex
	closed bool
	subs   map[*subscription]struct{}
	wg     sync.WaitGroup
}

var _ hub.TelemetrySink = (*Stream)(nil)

type subscription struct {
	cancel context.CancelFunc
}

func (c Config) withDefaults() Config {
	if c.StreamName == "" {
		c.StreamName = DefaultStreamName
	}
	if c.SubjectPrefix == "" {
		c.SubjectPrefix = DefaultSubjectPrefix
	}
	c.maxAgeSet = c.maxAgeSet || c.MaxAge != 0
	c.maxBytesSet = c.maxBytesSet || c.MaxBytes != 0
	if c.MaxAge == 0 {
		c.MaxAge = DefaultMaxAge
	}
	if c.MaxBytes == 0 {
		c.MaxBytes = -1
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

func (c Config) validate() error {
	if strings.ContainsAny(c.StreamName, ". *>\t\r\n/\\") {
		return fmt.Errorf("stream: invalid stream name %q", c.StreamName)
	}
	for _, tok := range strings.Split(c.SubjectPrefix, ".") {
		if tok == "" || strings.ContainsAny(tok, "*> \t\r\n") {
			return fmt.Errorf("stream: invalid subject prefix %q: want literal dot-separated tokens", c.SubjectPrefix)
		}
	}
	if c.MaxAge < 0 {
		return fmt.Errorf("stream: negative MaxAge %s", c.MaxAge)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return fmt.Errorf("stream: Replicas %d out of 1..5", c.Replicas)
	}
	if c.URL == "" && c.ListenAddr != "" && c.Token == "" {
		return errors.New("stream: an embedded listener needs a Token")
	}
	if c.URL == "" && c.Replicas != 1 {
		return fmt.Errorf("stream: the embedded server is one node; Replicas must be 1, not %d", c.Replicas)
	}
	return nil
}

// ClientURL is the URL other local programs can read the stream at: the
// embedded listener's (with its token) or the external URL; "" for an
// embedded server without a listener. It holds a credential: keep it out of
// logs.
func (s *Stream) ClientURL() string {
	if s.ns == nil {
		return s.cfg.URL
	}
	if s.cfg.ListenAddr == "" {
		return ""
	}
	addr, ok := s.ns.Addr().(*net.TCPAddr)
	if !ok {
		return ""
	}
	return "nats://" + s.cfg.Token + "@" + addr.String()
}

// Open starts the embedded server or connects to the external one, and
// creates the stream or updates its limits. ctx bounds the whole start-up.
func Open(ctx context.Context, cfg Config) (*Stream, error) {
	return open(ctx, cfg, true)
}

// open is Open with the embedded server's fsync policy as a parameter, so
// the benchmarks can measure what durability costs. Production always
// syncs: berth's blockSyncer, or the server's SyncAlways with
// Config.serverSync.
func open(ctx context.Context, cfg Config, syncAlways bool) (*Stream, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Stream{
		cfg:  cfg,
		log:  cfg.Logger.With("component", "stream", "stream", cfg.StreamName),
		subs: make(map[*subscription]struct{}),
	}
	opts := []nats.Option{
		nats.Name("berth"),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			s.log.Warn("nats async error", "subject", subj, "err", err)
		}),
	}
	var err error
	// The embedded server acknowledges from the page cache and berth
	// fsyncs (blockSyncer) before it answers anyone.
	ownSync := cfg.URL == "" && syncAlways && !cfg.serverSync && !cfg.ReadOnly
	if cfg.URL == "" {
		if s.ns, err = startEmbedded(ctx, cfg, syncAlways && !ownSync); err != nil {
			return nil, err
		}
		opts = append(opts, nats.InProcessServer(s.ns))
		if cfg.ListenAddr != "" {
			opts = append(opts, nats.Token(cfg.Token))
		}
		s.nc, err = nats.Connect("", opts...)
	} else {
		dial := 5 * time.Second
		if dl, ok := ctx.Deadline(); ok {
			dial = time.Until(dl)
		}
		opts = append(opts,
			nats.Timeout(dial),
			// Keep trying through cluster restarts; Append's ctx bounds
			// what a front end waits meanwhile.
			nats.MaxReconnects(-1),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				// A nil error is our own Close.
				if err != nil {
					s.log.Warn("nats disconnected", "err", err)
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				s.log.Info("nats reconnected", "server", nc.ConnectedUrlRedacted())
			}),
		)
		s.nc, err = nats.Connect(cfg.URL, opts...)
	}
	if err != nil {
		s.shutdownServer()
		return nil, fmt.Errorf("stream: connect to NATS %s: %w", s.where(), err)
	}
	if s.js, err = jetstream.New(s.nc); err != nil {
		s.nc.Close()
		s.shutdownServer()
		return nil, fmt.Errorf("stream: JetStream on %s: %w", s.where(), err)
	}
	atomic, err := s.ensureStream(ctx)
	if err != nil {
		s.nc.Close()
		s.shutdownServer()
		return nil, err
	}
	if ownSync {
		if s.blocks, err = newBlockSyncer(s.ns.StoreDir(), s.ns.GlobalAccount().Name, cfg.StreamName); err != nil {
			s.nc.Close()
			s.shutdownServer()
			return nil, err
		}
	}
	s.atomic = atomic
	if atomic || s.blocks != nil {
		s.commit = newCommitter(s)
	}
	s.log.Debug("telemetry stream open", "where", s.where(), "subjects", cfg.SubjectPrefix+".>", "groupCommit", s.commit != nil, "berthSync", s.blocks != nil)
	return s, nil
}

// where names the server for logs and errors, without the credentials a
// NATS URL may carry (nats://user:pass@host, nats://token@host).
func (s *Stream) where() string {
	if s.cfg.URL == "" {
		return "embedded (" + s.cfg.StoreDir + ")"
	}
	urls := strings.Split(s.cfg.URL, ",")
	for i, raw := range urls {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil {
			urls[i] = "(unparsable URL)"
			continue
		}
		if u.User != nil {
			u.User = url.User("REDACTED")
		}
		urls[i] = u.String()
	}
	return strings.Join(urls, ",")
}

// ensureStream creates or updates the stream and says whether Append may
// group messages into atomic batches: the stream must have
// AllowAtomicPublish, which only nats-server ≥ 2.12 knows (older servers
// drop the unknown field, so the config they return says false) and which
// some stream configurations refuse. Otherwise Append publishes each message
// on its own; the choice is made, and logged, once.
func (s *Stream) ensureStream(ctx context.Context) (bool, error) {
	if s.cfg.ReadOnly {
		// A reader must not reset limits berth serve chose, and may run
		// with an account that cannot edit streams.
		if _, err := s.js.Stream(ctx, s.cfg.StreamName); err != nil {
			return false, fmt.Errorf("stream: look up stream %s on %s: %w", s.cfg.StreamName, s.where(), err)
		}
		return false, nil
	}
	want := jetstream.StreamConfig{
		Name:        s.cfg.StreamName,
		Description: "berth device-to-cloud telemetry",
		Subjects:    []string{s.cfg.SubjectPrefix + ".>"},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		// Like an Event Hub: full or expired means the oldest go, never
		// that a device is refused.
		Discard:  jetstream.DiscardOld,
		MaxAge:   s.cfg.MaxAge,
		MaxBytes: s.cfg.MaxBytes,
		MaxMsgs:  -1,
		Replicas: s.cfg.Replicas,
		// No Nats-Msg-Id is ever set: IoT Hub does not de-duplicate by
		// message-id (a QoS 1 redelivery may arrive twice there too), and a
		// device-chosen ID must not make the stream drop a different message.
		// The window therefore stays at the server default and costs nothing.
	}
	var cur *jetstream.StreamConfig
	switch st, err := s.js.Stream(ctx, s.cfg.StreamName); {
	case err == nil:
		c := st.CachedInfo().Config
		cur = &c
	case errors.Is(err, jetstream.ErrStreamNotFound):
	default:
		return false, fmt.Errorf("stream: look up stream %s on %s: %w", s.cfg.StreamName, s.where(), err)
	}
	apply := func(sc jetstream.StreamConfig) (jetstream.StreamConfig, error) {
		if cur == nil {
			st, err := s.js.CreateStream(ctx, sc)
			if err != nil {
				return sc, err
			}
			return st.CachedInfo().Config, nil
		}
		sc = s.strengthen(*cur, sc)
		if sameSettings(*cur, sc) {
			// Nothing to change: an account that may only publish
			// starts too, and a start never rewrites the stream.
			return *cur, nil
		}
		st, err := s.js.UpdateStream(ctx, sc)
		if err != nil {
			return sc, err
		}
		return st.CachedInfo().Config, nil
	}
	if !s.cfg.noAtomic {
		// Group commit (commit.go): one fsync per batch, not per message.
		sc := want
		sc.AllowAtomicPublish = true
		got, err := apply(sc)
		switch {
		case err == nil && got.AllowAtomicPublish:
			return true, nil
		case err == nil:
			s.log.Warn("telemetry stream: NATS server ignores allow_atomic (nats-server ≥ 2.12 needed); appending one message per publish, one fsync each",
				"where", s.where(), "server", s.nc.ConnectedServerVersion())
			return false, nil
		default:
			// E.g. a stream whose other settings exclude atomic
			// publish, or an account that may not change them: keep
			// the stream as it is and publish message by message.
			s.log.Warn("telemetry stream: cannot enable atomic batch publish on the stream; appending one message per publish, one fsync each",
				"where", s.where(), "server", s.nc.ConnectedServerVersion(), "err", err)
		}
	}
	if _, err := apply(want); err != nil {
		return false, fmt.Errorf("stream: create or update stream %s on %s: %w", want.Name, s.where(), err)
	}
	return false, nil
}

// strengthen is the configuration an existing stream gets on start: what
// berth needs (its subjects, limits retention, discard old) applied onto
// the stream's current settings, never weakening them. Every node of a
// cluster starts with its own flags, and a start must not undo what an
// operator or another node chose: replicas only grow, storage stays (it
// cannot change), atomic publish stays on once on, and the age and size
// limits change only when this start was given them explicitly
// (--stream-max-age and the like), otherwise the stream keeps its own.
func (s *Stream) strengthen(cur, want jetstream.StreamConfig) jetstream.StreamConfig {
	out := cur
	out.Retention, out.Discard = want.Retention, want.Discard
	if !slices.Contains(out.Subjects, want.Subjects[0]) {
		out.Subjects = append(slices.Clone(out.Subjects), want.Subjects[0])
	}
	out.Replicas = max(cur.Replicas, want.Replicas)
	out.AllowAtomicPublish = cur.AllowAtomicPublish || want.AllowAtomicPublish
	if s.cfg.maxAgeSet {
		out.MaxAge = want.MaxAge
	}
	if s.cfg.maxBytesSet {
		out.MaxBytes = want.MaxBytes
	}
	if out.Description == "" {
		out.Description = want.Description
	}
	return out
}

// sameSettings reports whether an update from a to b would change nothing
// berth sets.
func sameSettings(a, b jetstream.StreamConfig) bool {
	return slices.Equal(a.Subjects, b.Subjects) && a.Retention == b.Retention && a.Discard == b.Discard &&
		a.Replicas == b.Replicas && a.AllowAtomicPublish == b.AllowAtomicPublish &&
		a.MaxAge == b.MaxAge && a.MaxBytes == b.MaxBytes && a.Description == b.Description
}

// Append stores m and returns once the stream has acknowledged it, which on
// the embedded server means fsynced (by berth, blocksync.go) and on an external
// one means stored per that cluster's replication and sync settings. ctx
// bounds the wait; without a deadline JetStream's default of 5 s applies. A
// failed Append may still have stored the message (the ack can be lost after
// the write): the caller must then not acknowledge, and the device's
// redelivery makes a duplicate, as on IoT Hub.
//
// Concurrent Appends are committed together (see commit.go): m waits in a
// bounded queue while an earlier publish is in flight and then goes out
// with whatever else queued meanwhile: on the embedded server as pipelined
// publishes followed by one fsync, on an external one as one atomic batch
// (16 or more messages) or as concurrent single publishes. A message that finds
// nothing in flight is published at once. If ctx ends while m is queued
// (or while Append waits for room in the queue), m is dropped and Append
// returns ctx's error; once m is sent, Append returns the publish's
// outcome, even if ctx ends meanwhile (the publish is bounded by the latest
// deadline among its messages' callers), and a failed batch fails every
// message in it. Appends made one after another (one device's messages)
// are stored in that order.
func (s *Stream) Append(ctx context.Context, m *hub.Message) error {
	if m == nil {
		return errors.New("stream: append nil message")
	}
	// A caller that has already given up must not have the message stored
	// behind its back: it will not acknowledge, so the device resends.
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("stream: append %s/%s: %w", m.Hub, m.DeviceID, err)
	}
	msg, err := encode(s.cfg.SubjectPrefix, m, time.Now())
	if err != nil {
		return err
	}
	what := m.Hub + "/" + m.DeviceID
	if s.commit != nil {
		return s.commit.append(ctx, msg, what)
	}
	return s.publishRetrying(ctx, msg, what)
}

// publishOne publishes one message and waits for its PubAck.
func (s *Stream) publishOne(ctx context.Context, msg *nats.Msg, what string) error {
	ack, err := s.js.PublishMsg(ctx, msg)
	if err != nil {
		return fmt.Errorf("stream: append %s to %s: %w", what, s.cfg.StreamName, err)
	}
	// Another stream capturing the same subjects would ack too (JetStream
	// refuses overlapping streams, but an operator can still point berth at
	// a different stream name than the one that owns the prefix).
	if ack.Stream != s.cfg.StreamName {
		return fmt.Errorf("stream: append %s: stored in stream %q, not %q; check SubjectPrefix", what, ack.Stream, s.cfg.StreamName)
	}
	return nil
}

// Subscribe delivers the messages matching opts, in stream order, decoded
// back into hub.Messages, until ctx ends or the Stream closes; then the
// channel is closed. It reads through ephemeral consumers that berth
// replaces when a NATS server is lost (reader.go), resuming after the last
// message delivered. Messages that do not decode (published by something
// other than berth) are logged and skipped.
func (s *Stream) Subscribe(ctx context.Context, opts SubscribeOptions) (<-chan *hub.Message, error) {
	// Subjects are prefix.{hub}.{partition}.{device}; a device's
	// partition depends on its hub's partition count, which the stream
	// does not know, so a device filter leaves the partition open.
	filter := s.cfg.SubjectPrefix + ".>"
	switch {
	case opts.DeviceID != "" && opts.Hub != "":
		filter = s.cfg.SubjectPrefix + "." + EncodeToken(opts.Hub) + ".*." + EncodeToken(opts.DeviceID)
	case opts.DeviceID != "":
		filter = s.cfg.SubjectPrefix + ".*.*." + EncodeToken(opts.DeviceID)
	case opts.Hub != "":
		filter = s.cfg.SubjectPrefix + "." + EncodeToken(opts.Hub) + ".>"
	}
	from := readFrom{policy: jetstream.DeliverNewPolicy}
	if !opts.StartTime.IsZero() {
		from = readFrom{policy: jetstream.DeliverByStartTimePolicy, time: opts.StartTime.UTC()}
	}

	events, err := s.read(ctx, filter, from)
	if err != nil {
		return nil, err
	}
	out := make(chan *hub.Message, 16)
	go func() {
		defer close(out)
		for ev := range events {
			select {
			case out <- ev.Msg:
			case <-ctx.Done():
				// read ends too; drain what it still hands over.
			}
		}
	}()
	return out, nil
}

// Event is a stored telemetry message with where the stream keeps it.
type Event struct {
	Msg *hub.Message
	// Seq is the stream sequence number: unique in the stream, growing,
	// stable across restarts (the Event Hubs endpoint's sequence number
	// and offset).
	Seq uint64
	// Stored is when JetStream stored the message.
	Stored time.Time
}

// Close ends subscriptions, drains the connection and, when embedded,
// shuts the server down so its store is cleanly closed. It is idempotent.
func (s *Stream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for sub := range s.subs {
		sub.cancel()
	}
	s.mu.Unlock()
	s.wg.Wait()
	// Queued Appends are published and answered before the connection
	// goes; later ones fail.
	if s.commit != nil {
		s.commit.close()
	}

	var err error
	closed := make(chan struct{})
	s.nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	// Drain lets in-flight Appends get their acks before the connection
	// goes; with synchronous publishes there is nothing else buffered.
	if derr := s.nc.Drain(); derr != nil {
		s.nc.Close()
		if !errors.Is(derr, nats.ErrConnectionClosed) {
			err = fmt.Errorf("stream: drain NATS connection: %w", derr)
		}
	} else {
		select {
		case <-closed:
		case <-time.After(s.nc.Opts.DrainTimeout + time.Second):
			s.nc.Close()
		}
	}
	s.shutdownServer()
	return err
}

func (s *Stream) shutdownServer() {
	if s.ns == nil {
		return
	}
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

// Conn is the stream's NATS connection, for core NATS traffic that shares
// it (package linkbus's cross-node pushes). The Stream owns it: callers
// must not close or drain it.
func (s *Stream) Conn() *nats.Conn { return s.nc }
