// Package acceptloop is the accept loop every berth listener runs (MQTT,
// AMQP): accept until the listener fails or the server stops, and ride out
// temporary failures instead of giving up the port for good.
package acceptloop

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Run accepts connections on ln and hands each to serve, which returns
// false to stop the loop (the server is shutting down). A temporary accept
// failure (EMFILE, ENFILE: out of file descriptors) is retried with a
// backoff from 5 ms to 1 s, as net/http does. Run returns nil when ctx is
// done or stopped reports true after a failed accept (the listener was
// closed by a shutdown), and the accept error otherwise, prefixed by proto.
func Run(ctx context.Context, ln net.Listener, log *slog.Logger, proto string, stopped func() bool, serve func(net.Conn) bool) error {
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if stopped() {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				log.Warn(proto+": accept failed; retrying", "error", err.Error(), "backoff", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("%s: accept: %w", proto, err)
		}
		backoff = 0
		if !serve(nc) {
			return nil
		}
	}
}
