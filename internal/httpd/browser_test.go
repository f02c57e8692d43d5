package httpd_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"relay/internal/httpd"
)

// chromium is the browser binary, "" when none is installed.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// browser starts a headless Chromium for the test. Without one the test skips, unless
// RELAY_BROWSER_TEST=1 (scripts/ci-browser.sh) says it must run.
func browser(t *testing.T) context.Context {
	t.Helper()
	path := chromium()
	if path == "" {
		if os.Getenv("RELAY_BROWSER_TEST") == "1" {
			t.Fatal("RELAY_BROWSER_TEST=1 but no chromium binary found (apt-get install chromium)")
		}
		t.Skip("no chromium binary found (apt-get install chromium, or run scripts/ci-browser.sh)")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // CI runs as root, where Chromium's sandbox cannot start
		chromedp.DisableGPU,
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelCtx := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancelCtx(); cancelAlloc() })
	return ctx
}

// The admin page in a real browser: fill the preview form, click, read the result that
// the page's script fetched from /api/preview; then the same without JavaScript, where the
// server renders it; then a DNS check button.
func TestBrowserPreview(t *testing.T) {
	ctx := browser(t)
	e := start(t, setup{mode: "dry-run", http: httpd.Options{DNS: doctorJSON}})
	shots := t.TempDir()
	if dir := os.Getenv("RELAY_BROWSER_SHOTS"); dir != "" {
		shots = dir // kept after the test, e.g. as CI artifacts
		require.NoError(t, os.MkdirAll(dir, 0o755))
	}
	text := func(id string) string {
		t.Helper()
		s, err := chromedp.Run(ctx, chromedp.Text(chromedp.ID(id)))
		require.NoError(t, err)
		return s
	}
	attr := func(id, name string) string {
		t.Helper()
		a, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID(id), name))
		require.NoError(t, err)
		return a.Value
	}
	screenshot := func(name string) {
		t.Helper()
		shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(shots, name), shot, 0o644))
	}

	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(e.base+"/"),
		chromedp.WaitVisible(chromedp.ID("from")),
		chromedp.SendKeys(chromedp.ID("from"), "alice@gmail.com"),
		chromedp.SetValue(chromedp.ID("unit"), "sales"),
		chromedp.Click(chromedp.ID("preview-submit")),
		chromedp.WaitVisible(chromedp.ID("result-decision")),
	))
	require.Equal(t, `"alice at gmail.com via Example" <sales@example.com>`, text("r-from_effective"))
	require.Equal(t, "fallback-unit", text("r-reason"))
	require.Equal(t, "api", attr("result", "data-source"), "the script updated the page in place")
	loc, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.Equal(t, e.base+"/?from=alice%40gmail.com&unit=sales#result", loc, "the address bar can be shared")
	screenshot("preview-js.png")

	// Bad input: the API's error shows in place of a result.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.SetValue(chromedp.ID("from"), "not an address"),
		chromedp.Click(chromedp.ID("preview-submit")),
		chromedp.WaitVisible(chromedp.ID("result-error")),
	))
	require.Contains(t, text("result-error"), "is not a bare email address")

	// A DNS check, on demand.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Click(`//button[text()="Check partner.example"]`),
		chromedp.WaitVisible(chromedp.CSS("#dns-result p.status")),
	))
	h3, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dns-result h3")))
	require.NoError(t, err)
	require.Equal(t, "partner.example (unit sales)", h3)
	verdict, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#dns-result p.status")))
	require.NoError(t, err)
	require.Equal(t, "ready: the relay sends as this domain (unit-domain)", verdict)
	screenshot("dns-js.png")

	// Without JavaScript the form submits as a GET and the server renders the result.
	_, err = chromedp.Call(ctx, emulation.SetScriptExecutionDisabled, emulation.SetScriptExecutionDisabledParams{Value: true})
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(e.base+"/"),
		chromedp.WaitVisible(chromedp.ID("from")),
		chromedp.SendKeys(chromedp.ID("from"), "bob@example.com"),
	))
	resp, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.ID("preview-submit")))
	require.NoError(t, err)
	require.EqualValues(t, 200, resp.Status)
	require.NoError(t, chromedp.Do(ctx, chromedp.WaitVisible(chromedp.ID("result-decision"))))
	require.Equal(t, "bob@example.com", text("r-from_effective"))
	require.Equal(t, "server", attr("result", "data-source"))
	screenshot("preview-nojs.png")
	t.Logf("screenshots in %s", shots)
}
