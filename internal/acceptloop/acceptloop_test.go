package acceptloop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
)

type tempErr struct{}

func (tempErr) Error() string   { return "too many open files" }
func (tempErr) Temporary() bool { return true }

// scripted yields the accept results it is given, one per call.
type scripted struct {
	net.Listener
	results []error
}

func (l *scripted) Accept() (net.Conn, error) {
	err := l.results[0]
	l.results = l.results[1:]
	if err != nil {
		return nil, err
	}
	c, _ := net.Pipe()
	return c, nil
}

func TestRun(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	never := func() bool { return false }

	// Two temporary failures are ridden out; the third accept serves,
	// and serve's false ends the loop without an error.
	ln := &scripted{results: []error{tempErr{}, tempErr{}, nil}}
	served := 0
	err := Run(context.Background(), ln, log, "test", never, func(nc net.Conn) bool {
		served++
		nc.Close()
		return false
	})
	if err != nil || served != 1 {
		t.Fatalf("after temporary failures: err %v, served %d; want nil, 1", err, served)
	}

	// A permanent failure is returned, named by the protocol.
	boom := errors.New("boom")
	err = Run(context.Background(), &scripted{results: []error{boom}}, log, "test", never, nil)
	if !errors.Is(err, boom) || err.Error() != "test: accept: boom" {
		t.Fatalf("permanent failure: %v", err)
	}

	// A failure after the server stopped is a clean end.
	err = Run(context.Background(), &scripted{results: []error{boom}}, log, "test", func() bool { return true }, nil)
	if err != nil {
		t.Fatalf("failure after stop: %v", err)
	}
}
