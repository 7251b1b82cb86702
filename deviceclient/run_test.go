package deviceclient

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/berth-iot/berth/dps"
)

// step is one scripted answer of a fakeSession.
type step struct {
	res *Result
	err error
}

// fakeSession plays scripted answers and records the calls made.
type fakeSession struct {
	steps []step
	calls []string
}

func (f *fakeSession) next(call string) (*Result, error) {
	f.calls = append(f.calls, call)
	if len(f.steps) == 0 {
		return nil, errors.New("fake: no more answers")
	}
	s := f.steps[0]
	f.steps = f.steps[1:]
	return s.res, s.err
}

func (f *fakeSession) Register(context.Context) (*Result, error) { return f.next("register") }
func (f *fakeSession) Poll(_ context.Context, id string) (*Result, error) {
	return f.next("poll " + id)
}
func (f *fakeSession) Close() error { return nil }

func op(status int, opStatus, id string) step {
	o := &dps.OperationStatus{OperationID: id, Status: opStatus}
	if opStatus == dps.StatusAssigned {
		o.RegistrationState = &dps.RegistrationState{RegistrationID: "d", Status: opStatus, AssignedHub: "hub", DeviceID: "d"}
	}
	return step{res: &Result{Status: status, Operation: o, HasRetryAfter: true}}
}

func fail(status, code int) step {
	return step{err: &Error{Status: status, Code: code, HasRetryAfter: true}}
}

func TestRun(t *testing.T) {
	tests := []struct {
		name      string
		steps     []step
		retries   int
		wantCalls string
		wantOp    string // final operation status, "" for none
		wantErr   string
	}{
		{name: "register then poll", steps: []step{op(202, "assigning", "op1"), op(202, "assigning", "op1"), op(200, "assigned", "op1")},
			wantCalls: "register,poll op1,poll op1", wantOp: "assigned"},
		{name: "assigned at once", steps: []step{op(200, "assigned", "op1")}, wantCalls: "register", wantOp: "assigned"},
		{name: "unassigned keeps polling, as C# does", steps: []step{op(202, "assigning", "op1"), op(202, "unassigned", "op1"), op(200, "assigned", "op1")},
			wantCalls: "register,poll op1,poll op1", wantOp: "assigned"},
		{name: "throttled register is retried", steps: []step{fail(429, 429001), fail(503, 503000), op(202, "assigning", "op1"), op(200, "assigned", "op1")},
			wantCalls: "register,register,register,poll op1", wantOp: "assigned"},
		{name: "throttled poll is retried", steps: []step{op(202, "assigning", "op1"), fail(429, 429001), op(200, "assigned", "op1")},
			wantCalls: "register,poll op1,poll op1", wantOp: "assigned"},
		{name: "retries are bounded", retries: 2, steps: []step{fail(429, 429001), fail(429, 429001), fail(429, 429001), op(200, "assigned", "x")},
			wantCalls: "register,register,register", wantErr: "429001"},
		{name: "no retries", retries: -1, steps: []step{fail(500, 500000), op(200, "assigned", "x")},
			wantCalls: "register", wantErr: "500000"},
		{name: "unauthorized is final", steps: []step{fail(401, 401002), op(200, "assigned", "x")},
			wantCalls: "register", wantErr: "401002"},
		{name: "failed", steps: []step{op(202, "assigning", "op1"), op(200, "failed", "op1")},
			wantCalls: "register,poll op1", wantOp: "failed", wantErr: "not assigned"},
		{name: "disabled", steps: []step{op(200, "disabled", "")}, wantCalls: "register", wantOp: "disabled", wantErr: "not assigned"},
		{name: "assigning without operation id", steps: []step{op(202, "assigning", "")}, wantCalls: "register", wantErr: "no operationId"},
		{name: "answer without operation", steps: []step{{res: &Result{Status: 202}}}, wantCalls: "register", wantErr: "without an operation"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &fakeSession{steps: tt.steps}
			got, err := Run(context.Background(), s, Options{MaxRetries: tt.retries})
			if calls := strings.Join(s.calls, ","); calls != tt.wantCalls {
				t.Errorf("calls %s, want %s", calls, tt.wantCalls)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("err %v, want %q", err, tt.wantErr)
			}
			if tt.wantOp == "" {
				if got != nil {
					t.Errorf("operation %+v, want none", got)
				}
			} else if got == nil || got.Status != tt.wantOp {
				t.Errorf("operation %+v, want status %s", got, tt.wantOp)
			}
			if tt.wantOp == "failed" || tt.wantOp == "disabled" {
				if !errors.Is(err, ErrNotAssigned) {
					t.Errorf("err %v does not wrap ErrNotAssigned", err)
				}
			}
		})
	}
}

func TestRunHonoursRetryAfter(t *testing.T) {
	s := &fakeSession{steps: []step{
		{res: &Result{Status: 202, Operation: &dps.OperationStatus{OperationID: "o", Status: "assigning"}, RetryAfter: 50 * time.Millisecond, HasRetryAfter: true}},
		op(200, "assigned", "o"),
	}}
	start := time.Now()
	if _, err := Run(context.Background(), s, Options{}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("polled after %v, before the server's retry-after", d)
	}
}

func TestRunContext(t *testing.T) {
	s := &fakeSession{steps: []step{
		{res: &Result{Status: 202, Operation: &dps.OperationStatus{OperationID: "o", Status: "assigning"}, RetryAfter: time.Hour, HasRetryAfter: true}},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	_, err := Run(ctx, s, Options{MaxPoll: time.Hour})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want the context's", err)
	}
}

func TestDelay(t *testing.T) {
	tests := []struct {
		min, max time.Duration
		hint     time.Duration
		has      bool
		want     time.Duration
	}{
		{hint: 3 * time.Second, has: true, want: 3 * time.Second},
		{hint: 0, has: true, want: 0},
		{has: false, want: DefaultPoll},
		{hint: time.Minute, has: true, want: DefaultMaxPoll},
		{max: 5 * time.Second, hint: 8 * time.Second, has: true, want: 5 * time.Second},
		{min: time.Second, hint: 0, has: true, want: time.Second},
		{min: time.Minute, max: 2 * time.Second, hint: 0, has: true, want: 2 * time.Second},
	}
	for _, tt := range tests {
		o := Options{MinPoll: tt.min, MaxPoll: tt.max}.withDefaults()
		if got := o.delay(tt.hint, tt.has); got != tt.want {
			t.Errorf("min %v max %v hint %v/%v: %v, want %v", tt.min, tt.max, tt.hint, tt.has, got, tt.want)
		}
	}
}

func TestValidate(t *testing.T) {
	good := Options{GlobalEndpoint: "dps", IDScope: "0ne", RegistrationID: "d", SymmetricKey: "a2V5"}
	if err := good.withDefaults().validate(); err != nil {
		t.Fatalf("good options: %v", err)
	}
	for name, mut := range map[string]func(*Options){
		"transport": func(o *Options) { o.Transport = "amqp" },
		"endpoint":  func(o *Options) { o.GlobalEndpoint = "" },
		"scope":     func(o *Options) { o.IDScope = "" },
		"id":        func(o *Options) { o.RegistrationID = "" },
		"key":       func(o *Options) { o.SymmetricKey = "" },
		"bad key":   func(o *Options) { o.SymmetricKey = "***" },
		"payload":   func(o *Options) { o.Payload = []byte(`"str"`) },
	} {
		o := good
		mut(&o)
		if err := o.withDefaults().validate(); err == nil {
			t.Errorf("%s: accepted", name)
		} else if strings.Contains(err.Error(), "***") {
			t.Errorf("%s: error quotes the key: %v", name, err)
		}
	}
	o := Options{GlobalEndpoint: "dps.example"}.withDefaults()
	if o.Address != "dps.example:8883" || o.Transport != TransportMQTT {
		t.Errorf("mqtt defaults: %+v", o)
	}
	o = Options{GlobalEndpoint: "::1", Transport: "HTTPS"}.withDefaults()
	if o.Address != "[::1]:443" || o.Transport != TransportHTTPS {
		t.Errorf("https defaults: %+v", o)
	}
}

func TestWaiters(t *testing.T) {
	w := newWaiters()
	rid1, ch1, err := w.add()
	if err != nil {
		t.Fatal(err)
	}
	rid2, ch2, _ := w.add()
	if rid1 == rid2 {
		t.Fatalf("rids repeat: %s", rid1)
	}
	// Answers arrive out of order and go to their own request.
	if !w.deliver(Response{Status: 200, RID: rid2}, []byte("two")) || !w.deliver(Response{Status: 202, RID: rid1}, []byte("one")) {
		t.Fatal("deliver to a waiting rid failed")
	}
	if m := <-ch1; string(m.payload) != "one" || m.resp.Status != 202 {
		t.Errorf("rid %s got %+v", rid1, m)
	}
	if m := <-ch2; string(m.payload) != "two" {
		t.Errorf("rid %s got %+v", rid2, m)
	}
	// A second answer, or one for an unknown rid, is dropped.
	if w.deliver(Response{RID: rid1}, nil) || w.deliver(Response{RID: "99"}, nil) {
		t.Error("an unexpected answer was delivered")
	}
	w.fail(fmt.Errorf("gone"))
	select {
	case <-w.lost:
	default:
		t.Error("fail did not wake waiters")
	}
	if _, _, err := w.add(); err == nil {
		t.Error("a request after the connection was lost was accepted")
	}
}
