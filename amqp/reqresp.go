package amqp

import "sync"

// Node is a request/response node such as $cbs or $management: the peer attaches a sender to it
// (requests) and a receiver from it (replies), and matches replies by correlation-id. Route both
// attaches for its address to Node.Attach.
//
// A reply goes to the node's sender link, on the same connection, whose name or target address
// equals the request's reply-to, else to any of its sender links on that connection (the Azure
// IoT SDKs send reply-to "cbs", which matches neither). Replies wait for credit in a small
// per-link queue; a peer that never grants credit loses its link when the queue is full.
type Node struct {
	// Serve handles one request. It may reply at once or later, from any goroutine.
	Serve func(r *Request)

	mu      sync.Mutex
	senders map[*Conn][]*nodeSender
}

// maxQueuedReplies bounds the replies a node holds for a link without credit.
const maxQueuedReplies = 64

// Request is one request to a Node.
type Request struct {
	node    *Node
	Link    *Link
	Message *Message
}

// Conn is the connection the request came on.
func (r *Request) Conn() *Conn { return r.Link.Conn() }

// Reply sends resp to the requester: correlation-id is set to the request's message-id (same
// AMQP type) and to to its reply-to, unless resp already has them.
func (r *Request) Reply(resp *Message) error {
	if resp.Properties == nil {
		resp.Properties = &Properties{}
	}
	var replyTo string
	if p := r.Message.Properties; p != nil {
		replyTo = p.ReplyTo
		if resp.Properties.CorrelationID == nil {
			resp.Properties.CorrelationID = p.MessageID
		}
	}
	if resp.Properties.To == "" {
		resp.Properties.To = replyTo
	}
	ns := r.node.route(r.Conn(), replyTo)
	if ns == nil {
		return ErrClosed
	}
	return ns.send(resp)
}

// Attach accepts a link to the node: a peer sender brings requests, a peer receiver takes replies.
func (n *Node) Attach(l *Link) (LinkHandler, *Error) {
	if l.Role() == RoleReceiver {
		l.SetCredit(maxQueuedReplies, false)
		return nodeReceiver{n}, nil
	}
	ns := &nodeSender{n: n, l: l}
	n.mu.Lock()
	if n.senders == nil {
		n.senders = map[*Conn][]*nodeSender{}
	}
	n.senders[l.Conn()] = append(n.senders[l.Conn()], ns)
	n.mu.Unlock()
	return ns, nil
}

func (n *Node) route(c *Conn, replyTo string) *nodeSender {
	n.mu.Lock()
	defer n.mu.Unlock()
	list := n.senders[c]
	for _, ns := range list {
		if ns.l.Name() == replyTo || (ns.l.Target() != nil && ns.l.Target().Address == replyTo) {
			return ns
		}
	}
	if len(list) > 0 {
		return list[0]
	}
	return nil
}

type nodeReceiver struct{ n *Node }

func (nr nodeReceiver) Message(l *Link, d *Delivery) {
	_ = d.Accept()
	if nr.n.Serve != nil {
		nr.n.Serve(&Request{node: nr.n, Link: l, Message: d.Message})
	}
}

func (nodeReceiver) Detached(*Link, *Error) {}

type nodeSender struct {
	n       *Node
	l       *Link
	mu      sync.Mutex
	pending []*Message
}

// send sends at once when nothing waits, else queues. ns.mu is never held across Link.Send, so
// the engine's callbacks (Credit) can never wait for it.
func (ns *nodeSender) send(m *Message) error {
	ns.mu.Lock()
	queued := len(ns.pending) > 0
	ns.mu.Unlock()
	if !queued {
		if _, err := ns.l.Send(m, false); err != ErrNoCredit {
			return err
		}
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if len(ns.pending) >= maxQueuedReplies {
		go ns.l.Close(Errorf(ErrCondResourceLimitExceeded, "%d replies waiting for credit", maxQueuedReplies))
		return ErrNoCredit
	}
	ns.pending = append(ns.pending, m)
	return nil
}

func (ns *nodeSender) Credit(l *Link) {
	for {
		ns.mu.Lock()
		if len(ns.pending) == 0 {
			ns.mu.Unlock()
			return
		}
		m := ns.pending[0]
		ns.pending = ns.pending[1:]
		ns.mu.Unlock()
		if _, err := l.Send(m, false); err != nil {
			if err == ErrNoCredit {
				ns.mu.Lock()
				ns.pending = append([]*Message{m}, ns.pending...)
				ns.mu.Unlock()
			}
			return
		}
	}
}

func (ns *nodeSender) Detached(l *Link, _ *Error) {
	ns.n.mu.Lock()
	defer ns.n.mu.Unlock()
	list := ns.n.senders[l.Conn()]
	for i, x := range list {
		if x == ns {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(ns.n.senders, l.Conn())
	} else {
		ns.n.senders[l.Conn()] = list
	}
}
