package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/berth-iot/berth/deviceclient"
	"github.com/berth-iot/berth/internal/testenv"
	"github.com/berth-iot/berth/sas"
	"github.com/berth-iot/berth/server"
	"github.com/berth-iot/berth/serviceclient"
)

// chromium finds Debian's chromium (or Chrome), or skips the test (fails it
// under make test).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{os.Getenv("BERTH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"} {
		if name == "" {
			continue
		}
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	testenv.Unavailable(t, "no chromium on PATH: the console's browser tests need it (apt-get install -y chromium, or set BERTH_CHROMIUM)")
	return ""
}

// browser is a headless chromium driving the console.
type browser struct {
	t    *testing.T
	ctx  context.Context
	base string
}

func newBrowser(t *testing.T, base string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(t)),
		chromedp.NoSandbox,
		// berth's development CA is not in chromium's store; the test
		// trusts it as a user would after downloading it.
		chromedp.Flag("ignore-certificate-errors", true),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return &browser{t: t, ctx: ctx, base: strings.TrimSuffix(base, "/")}
}

// run runs actions with a deadline.
func (b *browser) run(what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.fail(what, err)
	}
}

// get runs one action that returns a value.
func get[T any](b *browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fail(what, err)
	}
	return v
}

func (b *browser) fail(what string, err error) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("main") ? document.querySelector("main").outerHTML : document.documentElement.outerHTML`))
	b.t.Fatalf("%s: %v\npage: %s", what, err, html)
}

// waitText waits until sel's text contains want.
func (b *browser) waitText(sel, want string) {
	b.t.Helper()
	js := `(function(){var e=document.querySelector(` + jsString(sel) + `);return !!e && e.textContent.indexOf(` + jsString(want) + `)>=0;})()`
	get(b, "wait for "+want+" in "+sel, chromedp.Poll[bool](js, chromedp.WithPollingInterval(100*time.Millisecond), chromedp.WithPollingTimeout(20*time.Second)))
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func (b *browser) signIn(connStr string) {
	b.t.Helper()
	b.run("sign in",
		chromedp.Navigate(b.base+"/signin"),
		chromedp.WaitVisible(chromedp.CSS("#cs")),
		chromedp.SetValue(chromedp.CSS("#cs"), connStr),
		chromedp.Click(chromedp.CSS("#signin")),
		chromedp.WaitVisible(chromedp.CSS("#idscope")),
	)
}

func (b *browser) signOut() {
	b.t.Helper()
	b.run("sign out", chromedp.Click(chromedp.CSS(".top button")), chromedp.WaitVisible(chromedp.CSS("#cs")))
}

// screenshot saves the page when BERTH_CONSOLE_SCREENSHOTS names a
// directory (docs/img is made that way, docs/console.md).
func (b *browser) screenshot(name string) {
	dir := os.Getenv("BERTH_CONSOLE_SCREENSHOTS")
	if dir == "" {
		return
	}
	png := get(b, "screenshot "+name, chromedp.FullScreenshot(100))
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		b.t.Error(err)
	}
}

// noHorizontalScroll checks the page at 200% zoom: a 1280-pixel window
// at 200% lays out as a 640-pixel one, and nothing may need horizontal
// scrolling there.
func (b *browser) noHorizontalScroll(what string) {
	b.t.Helper()
	b.run("narrow the viewport", chromedp.EmulateViewport(640, 900))
	defer b.run("restore the viewport", chromedp.EmulateReset())
	over := get(b, "measure "+what, chromedp.Evaluate[int](`document.documentElement.scrollWidth - document.documentElement.clientWidth`))
	if over > 0 {
		b.t.Errorf("%s at 200%% zoom needs %d px of horizontal scrolling", what, over)
	}
}

// The console in a real browser: sign in with the DPS owner connection
// string, create an enrollment group, watch a device's registration record
// appear; sign in as the hub owner and see its telemetry arrive live, edit
// its desired properties (the device hears them), call a method; a
// read-only policy cannot write; a POST without the CSRF token is refused.
func TestConsoleInBrowser(t *testing.T) {
	chromium(t)
	b := startWith(t, t.TempDir(), server.Config{AdminAddr: "127.0.0.1:0"})
	base := b.srv.AdminURL()
	if base == "" {
		t.Fatal("no operator listener")
	}
	br := newBrowser(t, base)

	// DPS: sign in, create a group, reveal its key.
	br.signIn(b.info.ServiceConnectionString)
	br.screenshot("overview")
	br.run("create a group",
		chromedp.Navigate(br.base+"/groups/new"),
		chromedp.WaitVisible(chromedp.CSS("#id")),
		chromedp.SetValue(chromedp.CSS("#id"), "console-group"),
		chromedp.SetValue(chromedp.CSS("#twinDesired"), `{"interval": 10}`),
		chromedp.Click(chromedp.CSS("#save")),
		chromedp.WaitVisible(chromedp.CSS(`button[hx-post="/groups/console-group/keys"]`)),
	)
	br.run("reveal the keys",
		chromedp.Click(chromedp.CSS(`button[hx-post="/groups/console-group/keys"]`)),
		chromedp.WaitVisible(chromedp.CSS("#pk")),
	)
	groupKey := get(br, "read the key", chromedp.Value(chromedp.CSS("#pk")))
	if groupKey == "" {
		t.Fatal("no primary key revealed")
	}

	// A device registers with the Go device client; its record appears.
	const dev = "console-dev-1"
	devKey, err := sas.DeriveKey(groupKey, dev)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	op, err := deviceclient.Provision(ctx, deviceclient.Options{
		GlobalEndpoint: "127.0.0.1", Address: b.info.MQTTAddress, IDScope: b.info.IDScope,
		RegistrationID: dev, SymmetricKey: devKey, RootCAs: b.roots,
	})
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	checkAssigned(t, op, dev, b.info.HubHostName)
	br.run("open the group", chromedp.Navigate(br.base+"/groups/console-group"))
	br.waitText("main", dev)
	br.waitText("main", "assigned")
	br.screenshot("enrollment-group")
	br.noHorizontalScroll("the enrollment group page")
	br.run("registration records", chromedp.Navigate(br.base+"/registrations"))
	br.waitText("main", dev)
	br.screenshot("registrations")
	br.signOut()

	// Hub: the device page, live telemetry, a desired edit, a method.
	br.signIn(b.info.HubConnectionString)
	d := b.hubConnect(dev, devKey, false)
	d.subscribe("$iothub/twin/PATCH/properties/desired/#", 1)
	d.subscribe("$iothub/methods/POST/#", 0)
	br.run("device list", chromedp.Navigate(br.base+"/devices"))
	br.waitText("main", dev)
	br.screenshot("devices")
	br.noHorizontalScroll("the device list")
	br.run("device page", chromedp.Navigate(br.base+"/devices/"+dev))
	br.waitText("#telemetry-state", "Listening")
	d.publish("devices/"+dev+"/messages/events/unit=C", 1, `{"temperature": 21.5}`)
	br.waitText("#telemetry", `"temperature": 21.5`)
	br.waitText("#telemetry", `"unit":"C"`)

	br.run("edit desired",
		chromedp.SetValue(chromedp.CSS("#desired"), `{"interval": 5, "mode": "eco"}`),
		chromedp.Click(chromedp.CSS("#save-desired")),
	)
	br.waitText("#desired-result", "Saved")
	patch := d.next(d.desired, "the desired patch from the console")
	var got map[string]any
	if err := json.Unmarshal(patch.Payload(), &got); err != nil || got["mode"] != "eco" || got["interval"] != float64(5) {
		t.Fatalf("desired patch the device heard: %s (%v)", patch.Payload(), err)
	}

	br.run("invoke a method",
		chromedp.SetValue(chromedp.CSS("#method"), "reboot"),
		chromedp.SetValue(chromedp.CSS("#payload"), `{"delay": 1}`),
		chromedp.Click(chromedp.CSS("#invoke")),
	)
	req := d.next(d.methods, "the console's method call")
	if !strings.HasPrefix(req.Topic(), "$iothub/methods/POST/reboot/") {
		t.Fatalf("method topic %q", req.Topic())
	}
	d.answerMethod(req, 200, `{"rebooting": true}`)
	br.waitText("#method-result", "status 200")
	br.waitText("#method-result", `"rebooting": true`)
	br.screenshot("device")
	br.noHorizontalScroll("the device page")

	// A POST without the session's CSRF token is refused, even from the
	// console's own origin with its cookie.
	forged := get(br, "forged post", chromedp.Evaluate[int](`fetch("/devices/`+dev+`/desired", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded"}, body: "desired=%7B%22mode%22%3A%22pwned%22%7D"}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if forged != 403 {
		t.Fatalf("a POST without the CSRF token answered %d, want 403", forged)
	}
	forged = get(br, "forged post with a wrong token", chromedp.Evaluate[int](`fetch("/devices/`+dev+`/desired", {method: "POST", headers: {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": "forged"}, body: "desired=%7B%7D"}).then(r => r.status)`, chromedp.EvalAwaitPromise))
	if forged != 403 {
		t.Fatalf("a POST with a forged CSRF token answered %d, want 403", forged)
	}
	select {
	case m := <-d.desired:
		t.Fatalf("a refused POST reached the device: %s", m.Payload())
	case <-time.After(200 * time.Millisecond):
	}
	br.signOut()

	// A read-only policy (registryRead) sees the device but cannot write.
	sc, err := serviceclient.New(b.info.ServiceConnectionString, serviceclient.Options{CAFile: b.info.CAFile, Address: b.info.HTTPSAddress})
	if err != nil {
		t.Fatal(err)
	}
	p, err := sc.GetPolicy(ctx, b.info.HubHostName, "registryRead")
	if err != nil {
		t.Fatal(err)
	}
	br.signIn(p.ConnectionString(b.info.HubHostName))
	br.run("device page, read-only", chromedp.Navigate(br.base+"/devices/"+dev))
	br.waitText("main", "Device twin")
	br.run("edit desired, read-only",
		chromedp.SetValue(chromedp.CSS("#desired"), `{"mode": "turbo"}`),
		chromedp.Click(chromedp.CSS("#save-desired")),
	)
	br.waitText("#desired-result", "Refused")
	select {
	case m := <-d.desired:
		t.Fatalf("a read-only policy's edit reached the device: %s", m.Payload())
	case <-time.After(200 * time.Millisecond):
	}
}
