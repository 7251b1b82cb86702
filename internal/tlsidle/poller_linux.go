package tlsidle

import (
	"crypto/tls"
	"errors"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// sweepInterval is how often the poller looks for parked connections past
// their deadline: a deadline is kept to within this much.
const sweepInterval = 250 * time.Millisecond

// ErrPollerClosed is Park's answer once the poller is closed.
var ErrPollerClosed = errors.New("tlsidle: poller closed")

// Poller waits for many idle connections' sockets with one goroutine
// (epoll), so that an idle connection needs no goroutine at all: no stack,
// no g. A connection parks (Parking.Park) once it has nothing buffered; the
// poller calls its wake function on a new goroutine when its socket becomes
// readable or its deadline passes, and Cancel takes a parked connection
// back (to close it).
type Poller struct {
	epfd int
	evfd int // written by Close to end the wait
	done chan struct{}

	mu     sync.Mutex
	closed bool
	seq    uint64              // the last wait's id; ids start at 1 (0 is evfd)
	parked map[uint64]*Parking // by wait id
}

// Parking is one connection's registration with a Poller, reused for
// each of its waits. Its fields are guarded by the poller's mu.
type Parking struct {
	p          *Poller
	fd         int // the socket, open for as long as the connection is
	wake       func(error)
	id         uint64 // the current wait; 0 when not parked
	deadline   int64  // unix nanoseconds; 0 for none
	registered bool   // fd is in the epoll set (disarmed after each event)
}

// NewPoller starts a poller. Close stops it.
func NewPoller() (*Poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, os.NewSyscallError("epoll_create1", err)
	}
	evfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, os.NewSyscallError("eventfd", err)
	}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, evfd, &unix.EpollEvent{Events: unix.EPOLLIN}); err != nil {
		unix.Close(epfd)
		unix.Close(evfd)
		return nil, os.NewSyscallError("epoll_ctl", err)
	}
	p := &Poller{epfd: epfd, evfd: evfd, done: make(chan struct{}), parked: make(map[uint64]*Parking)}
	go p.run()
	return p, nil
}

// Register prepares tc (whose only reader the caller is) for parking:
// wake will be called, on a new goroutine, once per Park that the socket
// or the deadline ends, with nil when the socket is readable and
// os.ErrDeadlineExceeded or ErrPollerClosed otherwise.
func (p *Poller) Register(tc *tls.Conn, wake func(error)) (*Parking, error) {
	if !layout.ok {
		return nil, errors.New("tlsidle: crypto/tls's buffers are not visible in this build")
	}
	sc, ok := tc.NetConn().(syscall.Conn)
	if !ok {
		return nil, errNoSocket
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	k := &Parking{p: p, fd: -1, wake: wake}
	if err := rc.Control(func(fd uintptr) { k.fd = int(fd) }); err != nil {
		return nil, err
	}
	return k, nil
}

// Park hands the connection to the poller until its socket is readable or
// deadline (zero: none) passes. The caller must not touch the connection's
// reading side after a nil return: its wake function continues. The
// connection must hold no buffered input (Buffered false).
func (k *Parking) Park(deadline time.Time) error {
	p := k.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrPollerClosed
	}
	p.seq++
	id := p.seq
	k.id, k.deadline = id, 0
	if !deadline.IsZero() {
		k.deadline = deadline.UnixNano()
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(id)), Pad: int32(uint32(id >> 32))}
	op := unix.EPOLL_CTL_ADD
	if k.registered {
		op = unix.EPOLL_CTL_MOD
	}
	if err := unix.EpollCtl(p.epfd, op, k.fd, &ev); err != nil {
		k.id = 0
		return os.NewSyscallError("epoll_ctl", err)
	}
	k.registered = true
	p.parked[id] = k
	return nil
}

// Cancel takes a parked connection back from the poller and reports
// whether it was parked; if so, its wake function will not be called and
// the caller continues the connection. It must be called before the
// socket is closed: a closed descriptor's number may be reused at once.
func (k *Parking) Cancel() bool {
	p := k.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if k.id == 0 {
		return false
	}
	delete(p.parked, k.id)
	k.id = 0
	if k.registered {
		_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, k.fd, nil)
		k.registered = false
	}
	return true
}

// Len is the number of connections parked now.
func (p *Poller) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.parked)
}

// fireLocked ends wait id, if it is still current, with err.
func (p *Poller) fireLocked(id uint64, err error) {
	k := p.parked[id]
	if k == nil {
		return
	}
	delete(p.parked, id)
	if k.id != id {
		return
	}
	k.id = 0
	go k.wake(err)
}

func (p *Poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 256)
	lastSweep := time.Now()
	for {
		n, err := unix.EpollWait(p.epfd, events, int(sweepInterval/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			// Not expected on a valid epoll descriptor; the deadlines
			// still need their sweeps.
			time.Sleep(sweepInterval)
			n = 0
		}
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if id := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32; id != 0 {
				p.fireLocked(id, nil)
			}
		}
		if now := time.Now(); now.Sub(lastSweep) >= sweepInterval {
			lastSweep = now
			ns := now.UnixNano()
			for id, k := range p.parked {
				if k.deadline != 0 && ns >= k.deadline {
					p.fireLocked(id, os.ErrDeadlineExceeded)
				}
			}
		}
		p.mu.Unlock()
	}
}

// Close stops the poller: every connection still parked is woken with
// ErrPollerClosed, and later Parks fail with it.
func (p *Poller) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	for id := range p.parked {
		p.fireLocked(id, ErrPollerClosed)
	}
	p.mu.Unlock()
	var one [8]byte
	one[0] = 1
	_, _ = unix.Write(p.evfd, one[:])
	<-p.done
	unix.Close(p.evfd)
	return os.NewSyscallError("close", unix.Close(p.epfd))
}
