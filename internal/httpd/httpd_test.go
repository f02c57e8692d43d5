package httpd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/crypto/bcrypt"

	"relay/internal/config"
	"relay/internal/httpd"
	"relay/internal/preview"
	"relay/internal/relaytest"
	"relay/internal/smtptest"
)

func TestHealthz(t *testing.T) {
	e := start(t, setup{})
	resp, body := e.get("/healthz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "ok\n", body)
	require.Equal(t, "text/plain; charset=utf-8", resp.Header.Get("Content-Type"))

	resp, _ = e.do(http.MethodHead, "/healthz", nil)
	require.Equal(t, http.StatusOK, resp.StatusCode)
}

// Every answer carries the security headers, the probes and errors too.
func TestSecurityHeaders(t *testing.T) {
	e := start(t, setup{})
	for _, path := range []string{"/", "/healthz", "/readyz", "/api/preview?from=a@example.com", "/api/preview", "/nothing", "/static/admin.js"} {
		resp, _ := e.get(path)
		require.Equal(t, "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
			resp.Header.Get("Content-Security-Policy"), path)
		require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"), path)
		require.Equal(t, "DENY", resp.Header.Get("X-Frame-Options"), path)
	}
}

func TestPreviewAPI(t *testing.T) {
	e := start(t, setup{})
	for _, tc := range []struct {
		name, query string
		want        preview.Decision
	}{
		{"allowed domain", "from=alice@example.com", preview.Decision{
			FromOriginal: "alice@example.com", FromEffective: "alice@example.com", Envelope: "alice@example.com",
			Reason: "allowed-domain", Detail: "example.com: listed in [sender] allowed_domains",
			DKIMDomain: "example.com", DKIMSelector: "s2026,s2026r"}},
		{"global fallback", "from=alice@gmail.com", preview.Decision{
			FromOriginal: "alice@gmail.com", FromEffective: `"alice at gmail.com via Example" <noreply@example.net>`,
			Envelope: "noreply@example.net", ReplyTo: "<alice@gmail.com>", Rewritten: true,
			Reason: "fallback-global", DKIMDomain: "example.net", DKIMSelector: "default"}},
		{"unit fallback", "from=alice@gmail.com&unit=sales", preview.Decision{
			FromOriginal: "alice@gmail.com", FromEffective: `"alice at gmail.com via Example" <sales@example.com>`,
			Envelope: "sales@example.com", ReplyTo: "<alice@gmail.com>", Rewritten: true,
			Reason: "fallback-unit", Unit: "sales", DKIMDomain: "example.com", DKIMSelector: "s2026,s2026r"}},
		{"unit domain", "from=bob@partner.example&unit=SALES", preview.Decision{
			FromOriginal: "bob@partner.example", FromEffective: "bob@partner.example", Envelope: "bob@partner.example",
			Reason: "unit-domain", Unit: "sales", DKIMDomain: "example.net", DKIMSelector: "default"}},
		{"spf pass", "from=app@spf-ok.example", preview.Decision{
			FromOriginal: "app@spf-ok.example", FromEffective: "app@spf-ok.example", Envelope: "app@spf-ok.example",
			Reason: "spf-pass", DKIMDomain: "example.net", DKIMSelector: "default"}},
		{"dkim delegated", "from=app@delegated.example", preview.Decision{
			FromOriginal: "app@delegated.example", FromEffective: "app@delegated.example", Envelope: "noreply@example.net",
			Reason: "dkim-delegated", DKIMDomain: "delegated.example", DKIMSelector: "default"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.get("/api/preview?" + tc.query)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var got preview.Decision
			require.NoError(t, json.Unmarshal([]byte(body), &got))
			if tc.want.Detail == "" {
				tc.want.Detail = got.Detail // the live checks' wording is policy's, tested there
			}
			require.Equal(t, tc.want, got)
			// The bytes are those of `relay send -dry-run -json` (cmd/relay tests the two
			// side by side): one writer.
			var want bytes.Buffer
			require.NoError(t, preview.WriteJSON(&want, got))
			require.Equal(t, want.String(), body)
		})
	}
	require.Zero(t, e.sink.Count(), "a preview sends nothing")
	entries, err := os.ReadDir(e.spool)
	require.NoError(t, err)
	for _, de := range entries {
		require.NotContains(t, de.Name(), ".msg", "a preview spools nothing")
	}
}

func TestPreviewBadInput(t *testing.T) {
	e := start(t, setup{})
	long := strings.Repeat("a", 250) + "@example.com"
	for _, tc := range []struct {
		name, method, query string
		code                int
		err                 string
	}{
		{"no from", "GET", "", 400, "from: no address"},
		{"empty from", "GET", "from=", 400, "from: no address"},
		{"not an address", "GET", "from=alice", 400, "is not an email address"},
		{"display name", "GET", "from=" + url.QueryEscape("Alice <alice@example.com>"), 400, "not a bare email address"},
		{"angle brackets", "GET", "from=" + url.QueryEscape("<alice@example.com>"), 400, "not a bare email address"},
		{"header injection", "GET", "from=" + url.QueryEscape("a@example.com\r\nBcc: x@evil.example"), 400, "control characters"},
		{"NUL", "GET", "from=a%00@example.com", 400, "control characters"},
		{"too long", "GET", "from=" + long, 400, "at most 254"},
		{"unknown unit", "GET", "from=a@example.com&unit=marketing", 400, `unknown business unit "marketing"`},
		{"unit with control characters", "GET", "from=a@example.com&unit=sa%0Ales", 400, "unit: contains control characters"},
		{"unit too long", "GET", "from=a@example.com&unit=" + strings.Repeat("u", 300), 400, "unit: 300 octets"},
		{"POST", "POST", "from=a@example.com", 405, "method POST not allowed"},
		{"PUT", "PUT", "from=a@example.com", 405, "method PUT not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(tc.method, "/api/preview?"+tc.query, nil)
			require.Equal(t, tc.code, resp.StatusCode, body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var got struct {
				Error string `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &got), body)
			require.Contains(t, got.Error, tc.err)
			if tc.code == 405 {
				require.Equal(t, "GET, HEAD", resp.Header.Get("Allow"))
			}
		})
	}
}

// /readyz checks the spool through spool.Writable, which tells an unusable directory by
// its path (gone, replaced) as well as by its permissions; permission bits do not stop
// root, under which CI runs, so the spool is made unwritable by moving it away.
func TestReadyzSpool(t *testing.T) {
	e := start(t, setup{http: httpd.Options{ReadyTTL: time.Nanosecond}})
	ready := func() (int, string) {
		resp, body := e.get("/readyz")
		return resp.StatusCode, body
	}
	code, body := ready()
	require.Equal(t, http.StatusOK, code, body)
	require.Equal(t, "ready\n", body)

	away := e.spool + ".away"
	require.NoError(t, os.Rename(e.spool, away))
	code, body = ready()
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Regexp(t, `^spool: spool .*: stat .*: no such file or directory\n$`, body)

	require.NoError(t, os.Rename(away, e.spool))
	code, body = ready()
	require.Equal(t, http.StatusOK, code, body)

	if os.Geteuid() != 0 {
		// Without root the permission bits count too.
		require.NoError(t, os.Chmod(e.spool, 0o500))
		t.Cleanup(func() { os.Chmod(e.spool, 0o700) })
		code, body = ready()
		require.Equal(t, http.StatusServiceUnavailable, code)
		require.Contains(t, body, "spool: ")
		require.NoError(t, os.Chmod(e.spool, 0o700))
		code, _ = ready()
		require.Equal(t, http.StatusOK, code)
	}
}

// The result is reused for ReadyTTL: a probe right after a change still sees the old one.
func TestReadyzCached(t *testing.T) {
	e := start(t, setup{http: httpd.Options{ReadyTTL: time.Hour}})
	resp, _ := e.get("/readyz")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.NoError(t, os.Rename(e.spool, e.spool+".away"))
	t.Cleanup(func() { os.Rename(e.spool+".away", e.spool) })
	resp, _ = e.get("/readyz")
	require.Equal(t, http.StatusOK, resp.StatusCode, "cached")

	// A reload starts afresh.
	cfg, err := config.Load(e.path)
	require.NoError(t, err)
	_, err = e.srv.Reload(cfg)
	require.NoError(t, err)
	resp, body := e.get("/readyz")
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
}

// countingListener accepts connections, counts them and closes them: an upstream that
// only tells how often it was dialled.
func countingListener(t *testing.T) (addr string, n *atomic.Int64) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { ln.Close() })
	n = new(atomic.Int64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return ln.Addr().String(), n
}

func TestReadyzUpstream(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadAddr := dead.Addr().String()
	dead.Close()

	for _, tc := range []struct {
		name, mode string
		edit       func(string) string
		code       int
		body       string
	}{
		{"unreachable", "spool", nil, 503, `^upstream: dial tcp 127\.0\.0\.1:\d+: connect: connection refused\n$`},
		{"unreachable, direct mode", "direct", nil, 503, `^upstream: dial tcp`},
		{"unreachable, left out", "spool", replace("[http]\n", "[http]\nready_without_upstream = true\n"), 200, `^ready\n$`},
		{"unreachable, dry run", "dry-run", nil, 200, `^ready\n$`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			edit := func(s string) string {
				s = regexp.MustCompile(`address = "127\.0\.0\.1:\d+"`).ReplaceAllString(s, `address = "`+deadAddr+`"`)
				if tc.edit != nil {
					s = tc.edit(s)
				}
				return s
			}
			e := start(t, setup{mode: tc.mode, edit: edit, http: httpd.Options{ReadyTTL: time.Nanosecond}})
			resp, body := e.get("/readyz")
			require.Equal(t, tc.code, resp.StatusCode, body)
			require.Regexp(t, tc.body, body)
		})
	}

	t.Run("file outbox", func(t *testing.T) {
		dir := t.TempDir()
		e := start(t, setup{
			edit: func(s string) string {
				return regexp.MustCompile(`address = "127\.0\.0\.1:\d+"`).ReplaceAllString(s, `address = "file:`+dir+`"`)
			},
			http: httpd.Options{ReadyTTL: time.Nanosecond},
		})
		resp, body := e.get("/readyz")
		require.Equal(t, http.StatusOK, resp.StatusCode, body)
		require.NoError(t, os.Rename(dir, dir+".away"))
		resp, body = e.get("/readyz")
		require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
		require.Contains(t, body, "upstream: outbox "+dir)
		require.NoError(t, os.Rename(dir+".away", dir))
		entries, _ := os.ReadDir(dir)
		require.Empty(t, entries, "the probe leaves nothing in the outbox")
	})
}

// Probes arriving together share one check: the smarthost sees one connection, not one
// per probe.
func TestReadyzSingleflight(t *testing.T) {
	addr, dials := countingListener(t)
	e := start(t, setup{
		edit: func(s string) string {
			return regexp.MustCompile(`address = "127\.0\.0\.1:\d+"`).ReplaceAllString(s, `address = "`+addr+`"`)
		},
		http: httpd.Options{ReadyTTL: time.Minute},
	})
	var wg sync.WaitGroup
	codes := make([]int, 20)
	for i := range codes {
		wg.Go(func() {
			resp, err := http.Get(e.base + "/readyz")
			if err == nil {
				codes[i] = resp.StatusCode
				resp.Body.Close()
			}
		})
	}
	wg.Wait()
	for _, c := range codes {
		require.Equal(t, http.StatusOK, c)
	}
	require.EqualValues(t, 1, dials.Load())
}

func TestBasicAuth(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret pass"), bcrypt.MinCost)
	require.NoError(t, err)
	e := start(t, setup{edit: replace("[http]\n", fmt.Sprintf("[http]\nusername = \"admin\"\npassword_hash = %q\n", hash))})
	auth := func(user, pass string) func(*http.Request) {
		return func(r *http.Request) { r.SetBasicAuth(user, pass) }
	}
	for _, tc := range []struct {
		name, path string
		prep       func(*http.Request)
		code       int
	}{
		{"page without credentials", "/", nil, 401},
		{"page, wrong password", "/", auth("admin", "s3cret"), 401},
		{"page, wrong user", "/", auth("root", "s3cret pass"), 401},
		{"page, empty", "/", auth("", ""), 401},
		{"page", "/", auth("admin", "s3cret pass"), 200},
		{"page again (remembered)", "/", auth("admin", "s3cret pass"), 200},
		{"preview without credentials", "/api/preview?from=a@example.com", nil, 401},
		{"preview", "/api/preview?from=a@example.com", auth("admin", "s3cret pass"), 200},
		{"metrics without credentials", "/metrics", nil, 401},
		{"metrics", "/metrics", auth("admin", "s3cret pass"), 200},
		{"static without credentials", "/static/admin.js", nil, 401},
		{"unknown path without credentials", "/secret", nil, 401},
		{"healthz without credentials", "/healthz", nil, 200},
		{"readyz without credentials", "/readyz", nil, 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := e.do(http.MethodGet, tc.path, tc.prep)
			require.Equal(t, tc.code, resp.StatusCode, body)
			if tc.code == 401 {
				require.Equal(t, `Basic realm="relay", charset="UTF-8"`, resp.Header.Get("WWW-Authenticate"))
			}
		})
	}

	// A reload with another password refuses the old one.
	hash2, err := bcrypt.GenerateFromPassword([]byte("new pass"), bcrypt.MinCost)
	require.NoError(t, err)
	text, err := os.ReadFile(e.path)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(e.path, bytes.Replace(text, hash, hash2, 1), 0o600))
	cfg, err := config.Load(e.path)
	require.NoError(t, err)
	_, err = e.srv.Reload(cfg)
	require.NoError(t, err)
	resp, _ := e.do(http.MethodGet, "/", auth("admin", "s3cret pass"))
	require.Equal(t, 401, resp.StatusCode)
	resp, _ = e.do(http.MethodGet, "/", auth("admin", "new pass"))
	require.Equal(t, 200, resp.StatusCode)
}

func TestMetrics(t *testing.T) {
	e := start(t, setup{})
	resp, body := e.get("/metrics")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, body, "relay_messages_received_total")
}

// elementText is the text of the element with the given id in page, unescaped.
func elementText(t *testing.T, page, id string) string {
	t.Helper()
	m := regexp.MustCompile(`id="` + regexp.QuoteMeta(id) + `"[^>]*>([^<]*)<`).FindStringSubmatch(page)
	require.NotNil(t, m, "no element %s in the page", id)
	return html.UnescapeString(m[1])
}

func TestAdminPage(t *testing.T) {
	e := start(t, setup{http: httpd.Options{DNS: doctorJSON}})
	resp, page := e.get("/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	require.Contains(t, page, `<html lang="en">`)
	require.Contains(t, page, "<h1>")
	for _, s := range []string{
		`<th scope="row">sales</th><td>sales@example.com</td>`,
		`<td>partner.example (and the global list)</td>`,
		`<th scope="row">support</th><td>help@example.net</td>`,
		`<th scope="row">(global)</th><td>noreply@example.net</td><td>example.com, *.example.com</td>`,
		`<label for="from">`, `<label for="unit">`,
		`<option value="sales">sales</option>`,
		`<button type="submit">Check partner.example</button>`,
		`<button type="submit">Check example.net</button>`,
		`<p id="spool-depth">0 messages in the spool.</p>`,
	} {
		require.Contains(t, page, s)
	}
	require.NotContains(t, page, "Check *.example.com", "a pattern is not a domain to check")
	require.NotRegexp(t, `(src|href)="(https?:)?//`, page, "nothing from elsewhere")
	require.Contains(t, page, `<dl id="result-decision" hidden>`, "no result before a preview")

	for path, ctype := range map[string]string{"/static/admin.js": "text/javascript; charset=utf-8", "/static/admin.css": "text/css; charset=utf-8"} {
		resp, body := e.get(path)
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, ctype, resp.Header.Get("Content-Type"), path)
		require.NotEmpty(t, body)
	}
	resp, _ = e.get("/static/")
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "no listing")
	resp, _ = e.get("/nothing")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	resp, _ = e.do(http.MethodPost, "/", nil)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
}

// The preview form works without JavaScript: the page renders the result itself.
func TestAdminPreviewWithoutJS(t *testing.T) {
	e := start(t, setup{})
	resp, page := e.get("/?from=alice%40gmail.com&unit=sales")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, `"alice at gmail.com via Example" <sales@example.com>`, elementText(t, page, "r-from_effective"))
	require.Equal(t, "fallback-unit", elementText(t, page, "r-reason"))
	require.Equal(t, "yes", elementText(t, page, "r-rewritten"))
	require.Contains(t, page, `data-source="server"`)
	require.Contains(t, page, `value="alice@gmail.com"`, "the form keeps its values")
	require.Contains(t, page, `<option value="sales" selected>sales</option>`)

	resp, page = e.get("/?from=" + url.QueryEscape("<script>alert(1)</script>"))
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.NotContains(t, page, "<script>alert")
	require.Contains(t, elementText(t, page, "result-error"), "not a bare email address")
	require.Contains(t, page, `<dl id="result-decision" hidden>`)
}

func TestDNS(t *testing.T) {
	e := start(t, setup{http: httpd.Options{DNS: doctorJSON}})
	resp, body := e.get("/api/dns?domain=Delegated.Example")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	var res struct {
		Domains []struct {
			Domain, Status, Verdict string
		} `json:"domains"`
		ExitCode int `json:"exit_code"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &res))
	require.Len(t, res.Domains, 1)
	require.Equal(t, "delegated.example", res.Domains[0].Domain)
	require.Equal(t, "ready", res.Domains[0].Status, body)

	for _, q := range []string{"", "domain=", "domain=localhost", "domain=a..b", "domain=" + url.QueryEscape("a\nb.example"), "domain=x.example&unit=nope"} {
		resp, body := e.get("/api/dns?" + q)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode, q)
		require.Contains(t, body, `"error"`, q)
	}

	// The page checks one domain when asked, rendered by the server.
	resp, page := e.get("/?dns=spf-ok.example")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, page, `<p class="status status-ready">ready: the relay sends as this domain (spf-pass)</p>`)

	// Without a doctor the API says so.
	e2 := start(t, setup{})
	resp, _ = e2.get("/api/dns?domain=example.com")
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

// At most two DNS checks run at once; a third waits, then is told to come back.
func TestDNSBounded(t *testing.T) {
	release := make(chan struct{})
	var running, most atomic.Int64
	e := start(t, setup{http: httpd.Options{DNS: func(_ context.Context, _ *config.Config, _, _ string, w io.Writer) error {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			m := most.Load()
			if n <= m || most.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		_, err := w.Write([]byte(`{"domains":[]}`))
		return err
	}}})
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 3 {
		wg.Go(func() {
			resp, err := http.Get(e.base + "/api/dns?domain=example.com")
			if err == nil {
				codes <- resp.StatusCode
				resp.Body.Close()
			}
		})
	}
	c := <-codes // the third, after waiting its 2 s
	require.Equal(t, http.StatusServiceUnavailable, c)
	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		require.Equal(t, http.StatusOK, c)
	}
	require.EqualValues(t, 2, most.Load())
}

// The page shows the spool's depth and the last delivery outcomes, from the queue's hook.
func TestAdminRecentDeliveries(t *testing.T) {
	e := start(t, setup{})
	reply, err := smtptest.Send(e.srv.Addrs()[0], "alice@example.com", []string{"bob@dest.example"}, fmt.Sprintf(relaytest.MsgTmpl, "alice@example.com"))
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	id := strings.TrimPrefix(reply.Message, "Ok: queued as ")
	e.sink.Wait(t, 1)
	var page string
	require.Eventually(t, func() bool {
		_, page = e.get("/")
		return strings.Contains(page, "<code>"+id+"</code>")
	}, 5*time.Second, 20*time.Millisecond)
	require.Regexp(t, `<td><code>`+id+`</code></td><td>alice@example.com</td><td>1</td>\s*<td>bob@dest.example</td><td></td><td></td><td></td>`, page)
}

// A reload changes what the page and the preview see.
func TestReload(t *testing.T) {
	e := start(t, setup{})
	resp, _ := e.get("/api/preview?from=a@gmail.com&unit=marketing")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)

	text, err := os.ReadFile(e.path)
	require.NoError(t, err)
	text = append(text, []byte("[[units]]\nname = \"marketing\"\nfallback = \"news@example.com\"\n")...)
	require.NoError(t, os.WriteFile(e.path, text, 0o600))
	cfg, err := config.Load(e.path)
	require.NoError(t, err)
	_, err = e.srv.Reload(cfg)
	require.NoError(t, err)

	resp, body := e.get("/api/preview?from=a@gmail.com&unit=marketing")
	require.Equal(t, http.StatusOK, resp.StatusCode, body)
	require.Contains(t, body, `"envelope_from": "news@example.com"`)
	_, page := e.get("/")
	require.Contains(t, page, `<th scope="row">marketing</th><td>news@example.com</td>`)
}
