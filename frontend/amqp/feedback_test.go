package amqp

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	goamqp "github.com/Azure/go-amqp"

	"github.com/berth-iot/berth/hub"
)

// TestFeedbackLink: a service's feedback receiver, attached before there
// is any feedback, is woken when a device completes (ack full) and rejects
// (ack negative) over AMQP, and gets both records in one message with the
// content type, user-id and enqueued time the SDKs read; released, the
// message comes again (delivery-count 1); accepted, its records are gone.
// The file-notification receiver attaches and stays empty; without a
// service token neither attaches.
func TestFeedbackLink(t *testing.T) {
	f := newFixture(t)
	f.device(t, "d1")
	ctx := ctxT(t)

	anon := session(t, f.dial(t, nil))
	if _, err := anon.NewReceiver(ctx, "/messages/serviceBound/feedback", nil); err == nil {
		t.Fatal("feedback receiver attached without a token")
	} else {
		wantAMQPError(t, err, goamqp.ErrCondUnauthorizedAccess)
	}

	svc := session(t, f.dial(t, nil))
	if code, desc := putToken(t, svc, hubName, f.serviceToken(t, "service", time.Now().Add(time.Hour))); code != 200 {
		t.Fatalf("put-token: %d %s", code, desc)
	}
	fb, err := svc.NewReceiver(ctx, "/messages/serviceBound/feedback", &goamqp.ReceiverOptions{Credit: 10})
	if err != nil {
		t.Fatal(err)
	}
	files, err := svc.NewReceiver(ctx, "/messages/servicebound/filenotifications", nil)
	if err != nil {
		t.Fatal(err)
	}

	for _, s := range []struct{ id, ack string }{{"ok", hub.AckFull}, {"no", hub.AckNegative}} {
		if _, err := f.svc.CloudToDevice.Send(ctx, hubName, "d1", &hub.CloudMessage{MessageID: s.id, Ack: s.ack, Body: []byte(s.id)}); err != nil {
			t.Fatal(err)
		}
	}
	dev := f.deviceConn(t, "d1")
	c2d, err := dev.NewReceiver(ctx, "/devices/d1/messages/devicebound", &goamqp.ReceiverOptions{Credit: 2})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		m, err := c2d.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Properties.MessageID == "ok" {
			err = c2d.AcceptMessage(ctx, m)
		} else {
			err = c2d.RejectMessage(ctx, m, nil)
		}
		if err != nil {
			t.Fatal(err)
		}
	}

	// The first feedback message is released; it must come again with
	// delivery-count 1 (other messages may come in between: the two
	// records may be written into separate batches). Every other message
	// is accepted.
	var recs []hub.FeedbackRecord
	var released map[string]bool
	redelivered := false
	for len(recs) < 2 || !redelivered {
		m, err := fb.Receive(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if m.Properties == nil || m.Properties.ContentType == nil || *m.Properties.ContentType != hub.FeedbackContentType ||
			string(m.Properties.UserID) != hubName || m.Annotations["iothub-enqueuedtime"] == nil || len(m.Data) != 1 {
			t.Fatalf("feedback message %+v %v", m.Properties, m.Annotations)
		}
		var part []hub.FeedbackRecord
		if err := json.Unmarshal(m.Data[0], &part); err != nil {
			t.Fatalf("body %s: %v", m.Data[0], err)
		}
		if released == nil {
			released = map[string]bool{}
			for _, r := range part {
				released[r.OriginalMessageID] = true
			}
			if err := fb.ReleaseMessage(ctx, m); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if released[part[0].OriginalMessageID] {
			if m.Header == nil || m.Header.DeliveryCount != 1 {
				t.Fatalf("released feedback came back with %+v", m.Header)
			}
			redelivered = true
		}
		recs = append(recs, part...)
		if err := fb.AcceptMessage(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]string{}
	for _, r := range recs {
		got[r.OriginalMessageID] = r.StatusCode
		if r.DeviceID != "d1" || r.DeviceGenerationID == "" || r.Description != r.StatusCode {
			t.Errorf("record %+v", r)
		}
	}
	if len(got) != 2 || got["ok"] != hub.FeedbackSuccess || got["no"] != hub.FeedbackRejected {
		t.Fatalf("records %+v", recs)
	}
	waitFor(t, "the feedback to be completed", func() bool {
		n, err := f.svc.Feedback.Count(ctx, hubName)
		return err == nil && n == 0
	})
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if m, err := files.Receive(short, nil); err == nil {
		t.Errorf("file notification %+v", m)
	}
}
