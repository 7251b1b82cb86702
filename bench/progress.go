package bench

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Progress shows how a phase advances on stderr. On a terminal it redraws
// one line with a carriage return a few times a second; anywhere else (a
// CI log, a file) it prints a plain line every few seconds, since carriage
// returns in a log are noise.
type Progress struct {
	w        io.Writer
	tty      bool
	interval time.Duration
	label    string
	total    int64         // expected count; 0 when the phase is bounded by time
	span     time.Duration // expected duration when total is 0
	start    time.Time

	done atomic.Int64
	errs atomic.Int64

	stop     chan struct{}
	finished chan struct{}
	once     sync.Once
}

// ProgressOptions configure progress output; the zero value prints
// nothing.
type ProgressOptions struct {
	W   io.Writer // nil: no progress output
	TTY bool
	// Interval between updates; default 200 ms on a terminal, 5 s
	// otherwise.
	Interval time.Duration
}

// Start begins reporting a phase: total is the expected count of events
// (0 if unknown), span its expected duration (for time-bound phases).
// Stop it with Done.
func (o ProgressOptions) Start(label string, total int64, span time.Duration) *Progress {
	p := &Progress{w: o.W, tty: o.TTY, interval: o.Interval, label: label, total: total, span: span,
		start: time.Now(), stop: make(chan struct{}), finished: make(chan struct{})}
	if p.interval <= 0 {
		p.interval = 5 * time.Second
		if p.tty {
			p.interval = 200 * time.Millisecond
		}
	}
	if p.w == nil {
		close(p.finished)
		return p
	}
	go p.loop()
	return p
}

// Add counts one event (ok) or one error.
func (p *Progress) Add(ok bool) {
	if ok {
		p.done.Add(1)
	} else {
		p.errs.Add(1)
	}
}

// Done stops the display and prints the final state.
func (p *Progress) Done() {
	p.once.Do(func() { close(p.stop) })
	<-p.finished
}

func (p *Progress) loop() {
	defer close(p.finished)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			line := p.line(time.Now())
			if p.tty {
				fmt.Fprintf(p.w, "\r%s\x1b[K\n", line)
			} else {
				fmt.Fprintln(p.w, line)
			}
			return
		case now := <-t.C:
			line := p.line(now)
			if p.tty {
				// \x1b[K clears what a longer previous line left.
				fmt.Fprintf(p.w, "\r%s\x1b[K", line)
			} else {
				fmt.Fprintln(p.w, line)
			}
		}
	}
}

// barWidth is the width of the bar on a terminal.
const barWidth = 30

// line renders the state at now.
func (p *Progress) line(now time.Time) string {
	done, errs := p.done.Load(), p.errs.Load()
	elapsed := now.Sub(p.start)
	frac := -1.0
	switch {
	case p.total > 0:
		frac = float64(done+errs) / float64(p.total)
	case p.span > 0:
		frac = float64(elapsed) / float64(p.span)
	}
	rate := 0.0
	if elapsed > 0 {
		rate = float64(done) / elapsed.Seconds()
	}
	var b strings.Builder
	b.WriteString(p.label)
	if p.tty && frac >= 0 {
		n := int(min(frac, 1) * barWidth)
		b.WriteString(" [" + strings.Repeat("#", n) + strings.Repeat(".", barWidth-n) + "]")
	}
	if p.total > 0 {
		fmt.Fprintf(&b, " %d/%d", done+errs, p.total)
	} else {
		fmt.Fprintf(&b, " %d", done)
	}
	if frac >= 0 {
		fmt.Fprintf(&b, " %3.0f%%", min(frac, 1)*100)
	}
	fmt.Fprintf(&b, "  %.0f/s  %s", rate, elapsed.Truncate(100*time.Millisecond))
	if errs > 0 {
		fmt.Fprintf(&b, "  errors %d", errs)
	}
	return b.String()
}
