// Package wsconn turns a WebSocket into a net.Conn byte stream, for MQTT and AMQP over WebSockets
// (the Azure SDKs' MqttWs and AmqpWs transports on /$iothub/websocket). Message boundaries mean
// nothing: clients split their packets across binary messages at will (mqtt.js sends the first
// byte of CONNECT as a message of its own), so reads run across messages and each write is one
// binary message. The WebSocket protocol itself is gorilla/websocket's.
package wsconn

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

// ErrNoSubprotocol is returned by Upgrade when the client asked for none of the accepted
// subprotocols; the request has been answered with 400.
var ErrNoSubprotocol = errors.New("wsconn: no supported WebSocket subprotocol requested")

// Upgrade answers a WebSocket upgrade request whose Sec-WebSocket-Protocol names one of protocols
// (compared case-insensitively), echoes the client's own spelling (the Azure C SDK sends "MQTT",
// Node "mqtt"; a client aborts when its spelling is not echoed), and returns the connection as a
// net.Conn with the subprotocol chosen. The client certificate of the TLS connection under the
// WebSocket is kept for ConnectionState.
func Upgrade(w http.ResponseWriter, r *http.Request, protocols []string) (*Conn, string, error) {
	chosen := ""
	for _, p := range websocket.Subprotocols(r) {
		for _, want := range protocols {
			if strings.EqualFold(p, want) {
				chosen = p
				break
			}
		}
		if chosen != "" {
			break
		}
	}
	if chosen == "" {
		http.Error(w, "unsupported WebSocket subprotocol", http.StatusBadRequest)
		return nil, "", ErrNoSubprotocol
	}
	up := websocket.Upgrader{
		ReadBufferSize:  4096,
		WriteBufferSize: 4096,
		// Devices are not browsers: there is no origin to check.
		CheckOrigin: func(*http.Request) bool { return true },
	}
	ws, err := up.Upgrade(w, r, http.Header{"Sec-Websocket-Protocol": {chosen}})
	if err != nil {
		return nil, "", fmt.Errorf("wsconn: upgrade: %w", err)
	}
	c := New(ws)
	if r.TLS != nil {
		c.tls = *r.TLS
	}
	return c, chosen, nil
}

// Conn is a net.Conn over a WebSocket's binary messages.
type Conn struct {
	ws  *websocket.Conn
	tls tls.ConnectionState

	rmu sync.Mutex
	r   io.Reader // the current message

	wmu    sync.Mutex
	closed bool
}

// New wraps an established WebSocket (either side).
func New(ws *websocket.Conn) *Conn { return &Conn{ws: ws} }

// ConnectionState is the TLS state of the connection under the WebSocket (client certificates for
// X.509 devices and SASL EXTERNAL); empty when there was no TLS.
func (c *Conn) ConnectionState() tls.ConnectionState { return c.tls }

// Read reads across message boundaries. A text message is a protocol violation for the
// transports carried here and ends the connection.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if c.r == nil {
			typ, r, err := c.ws.NextReader()
			if err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) && (ce.Code == websocket.CloseNormalClosure || ce.Code == websocket.CloseGoingAway) {
					return 0, io.EOF
				}
				return 0, err
			}
			if typ != websocket.BinaryMessage {
				_ = c.writeControl(websocket.CloseUnsupportedData, "binary messages only")
				return 0, errors.New("wsconn: text message on a binary stream")
			}
			c.r = r
		}
		n, err := c.r.Read(p)
		if errors.Is(err, io.EOF) {
			c.r = nil
			if n == 0 {
				continue
			}
			err = nil
		}
		return n, err
	}
}

// Write sends p as one binary message.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	if err := c.ws.WriteMessage(websocket.BinaryMessage, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *Conn) writeControl(code int, text string) error {
	return c.ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text),
		time.Now().Add(time.Second))
}

// Close sends a normal close (1000) and closes the connection.
func (c *Conn) Close() error {
	c.wmu.Lock()
	if c.closed {
		c.wmu.Unlock()
		return nil
	}
	c.closed = true
	c.wmu.Unlock()
	_ = c.writeControl(websocket.CloseNormalClosure, "")
	return c.ws.Close()
}

func (c *Conn) LocalAddr() net.Addr                { return c.ws.LocalAddr() }
func (c *Conn) RemoteAddr() net.Addr               { return c.ws.RemoteAddr() }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.ws.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.ws.SetWriteDeadline(t) }
func (c *Conn) SetDeadline(t time.Time) error {
	if err := c.ws.SetReadDeadline(t); err != nil {
		return err
	}
	return c.ws.SetWriteDeadline(t)
}
