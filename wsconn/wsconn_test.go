package wsconn

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"
	"github.com/gorilla/websocket"

	"github.com/berth-iot/berth/amqp"
	"github.com/berth-iot/berth/internal/testcerts"
)

// echoServer upgrades on any path and echoes the byte stream back.
func echoServer(t *testing.T, protocols []string) (*httptest.Server, chan string) {
	chosen := make(chan string, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, p, err := Upgrade(w, r, protocols)
		if err != nil {
			return
		}
		chosen <- p
		defer c.Close()
		_, _ = io.Copy(c, c)
	}))
	t.Cleanup(srv.Close)
	return srv, chosen
}

func dial(t *testing.T, url string, protocols ...string) (*websocket.Conn, *http.Response, error) {
	d := websocket.Dialer{Subprotocols: protocols, HandshakeTimeout: 5 * time.Second,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	return d.Dial(strings.Replace(url, "http", "ws", 1)+"/$iothub/websocket", nil)
}

func TestSubprotocolEchoedInClientSpelling(t *testing.T) {
	srv, chosen := echoServer(t, []string{"mqtt", "AMQPWSB10"})
	for _, p := range []string{"mqtt", "MQTT", "AMQPWSB10"} {
		ws, resp, err := dial(t, srv.URL, p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != p {
			t.Fatalf("echoed %q for %q", got, p)
		}
		if got := <-chosen; got != p {
			t.Fatalf("Upgrade chose %q for %q", got, p)
		}
		ws.Close()
	}
}

func TestUnknownSubprotocolRefused(t *testing.T) {
	srv, _ := echoServer(t, []string{"mqtt"})
	_, resp, err := dial(t, srv.URL, "xmpp")
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("err %v, resp %v", err, resp)
	}
	if _, resp, _ = dial(t, srv.URL); resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatal("no subprotocol accepted")
	}
}

// Message boundaries mean nothing: a packet split over messages of 1 and 7 bytes reads whole, and
// two packets in one message read one after the other.
func TestByteStreamAcrossMessages(t *testing.T) {
	srv, _ := echoServer(t, []string{"mqtt"})
	ws, _, err := dial(t, srv.URL, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	c := New(ws)
	for _, m := range []string{"A", "MQP\x00\x01\x00\x00", "", "xyz"} {
		if err := ws.WriteMessage(websocket.BinaryMessage, []byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, 11)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatal(err)
	}
	if string(got) != "AMQP\x00\x01\x00\x00xyz" {
		t.Fatalf("read %q", got)
	}
}

func TestTextMessageEndsStream(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := Upgrade(w, r, []string{"mqtt"})
		if err != nil {
			return
		}
		_, err = c.Read(make([]byte, 10))
		done <- err
	}))
	defer srv.Close()
	ws, _, err := dial(t, srv.URL, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	_ = ws.WriteMessage(websocket.TextMessage, []byte("hello"))
	if err := <-done; err == nil {
		t.Fatal("a text message was read as stream data")
	}
}

func TestOrderlyCloseIsEOF(t *testing.T) {
	done := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := Upgrade(w, r, []string{"mqtt"})
		if err != nil {
			return
		}
		_, err = io.ReadAll(c)
		done <- err
	}))
	defer srv.Close()
	ws, _, err := dial(t, srv.URL, "mqtt")
	if err != nil {
		t.Fatal(err)
	}
	_ = New(ws).Close()
	if err := <-done; err != nil {
		t.Fatalf("orderly close read as %v", err)
	}
}

// AMQP over WebSocket over TLS, as AmqpWs does: go-amqp on the client side of a WebSocket, the
// engine on the server side; the TLS client certificate under the WebSocket reaches SASL EXTERNAL.
type wsHandler struct {
	cn  chan string
	got chan string
}

func (h *wsHandler) Authenticate(c *amqp.Conn, cr *amqp.SASLCredentials) amqp.SASLCode {
	if cr.Mechanism == amqp.MechEXTERNAL {
		h.cn <- cr.PeerCertificates[0].Subject.CommonName
		return amqp.SASLOK
	}
	return amqp.SASLAuth
}
func (h *wsHandler) Open(*amqp.Conn, *amqp.Open) *amqp.Error { return nil }
func (h *wsHandler) Attach(l *amqp.Link) (amqp.LinkHandler, *amqp.Error) {
	return h, nil
}
func (h *wsHandler) Closed(*amqp.Conn, error)         {}
func (h *wsHandler) Detached(*amqp.Link, *amqp.Error) {}
func (h *wsHandler) Message(l *amqp.Link, d *amqp.Delivery) {
	h.got <- string(d.Message.Data[0])
	_ = d.Accept()
}

func TestAMQPOverWebSocketWithClientCertificate(t *testing.T) {
	h := &wsHandler{cn: make(chan string, 1), got: make(chan string, 1)}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, err := Upgrade(w, r, []string{"AMQPWSB10"})
		if err != nil {
			return
		}
		_ = amqp.Serve(r.Context(), c, &amqp.Config{Handler: h})
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	defer srv.Close()

	cert := testcerts.Valid(t, "ws-device", nil, false, time.Now())
	d := websocket.Dialer{Subprotocols: []string{"AMQPWSB10"}, HandshakeTimeout: 5 * time.Second,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{cert.TLS()}}}
	ws, _, err := d.Dial(strings.Replace(srv.URL, "https", "wss", 1)+"/$iothub/websocket", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := goamqp.NewConn(ctx, New(ws), &goamqp.ConnOptions{SASLType: goamqp.SASLTypeExternal("")})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if cn := <-h.cn; cn != "ws-device" {
		t.Fatalf("EXTERNAL saw %q", cn)
	}
	s, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	snd, err := s.NewSender(ctx, "/devices/ws-device/messages/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := snd.Send(ctx, goamqp.NewMessage([]byte("over ws")), nil); err != nil {
		t.Fatal(err)
	}
	if got := <-h.got; got != "over ws" {
		t.Fatalf("got %q", got)
	}
	var ce *goamqp.ConnError
	if err := conn.Close(); err != nil && !errors.As(err, &ce) {
		t.Fatalf("close: %v", err)
	}
}
