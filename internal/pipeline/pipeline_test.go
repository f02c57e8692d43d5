package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"relay/internal/config"
	"relay/internal/dkimkey"
	"relay/internal/metrics"
	"relay/internal/policy"
	"relay/internal/signer"
)

// load builds a State from TOML text; key paths are the repository's test keys.
func load(t testing.TB, extra string) *State {
	t.Helper()
	root, err := filepath.Abs("../../testdata/keys")
	require.NoError(t, err)
	text := fmt.Sprintf(`
hostname = "relay.test"
[sender]
allowed_domains = ["example.com"]
fallback = "noreply@example.net"
display_name = "{name} via Example"
[[units]]
name = "sales"
fallback = "sales@example.com"
[spf]
enabled = false
sending_ips = ["203.0.113.10"]
[dkim]
delegation_check = false
private_key = "%[1]s/default.pem"
[upstream]
address = "file:./outbox"
%[2]s
`, root, extra)
	path := filepath.Join(t.TempDir(), "relay.toml")
	require.NoError(t, os.WriteFile(path, []byte(text), 0o600))
	cfg, err := config.Load(path)
	require.NoError(t, err)
	sg, err := signer.New(cfg.DKIM)
	require.NoError(t, err)
	return &State{Config: cfg, Signer: sg}
}

type recorder struct {
	id, from string
	to       []string
	data     []byte
}

func (r *recorder) Submit(_ context.Context, id, from string, to []string, data []byte) error {
	r.id, r.from, r.to, r.data = id, from, to, append([]byte(nil), data...)
	return nil
}

func TestProcessSubmitsSignedRewrittenMessage(t *testing.T) {
	rec := &recorder{}
	p := New(load(t, ""), rec, nil)
	p.Now = func() time.Time { return time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC) }
	res, err := p.Process(context.Background(), Input{
		ID: "abc", Envelope: "app@gmail.com", To: []string{"bob@dest.example"},
		Data: []byte("From: Alice <alice@gmail.com>\nSubject: hi\n\nbody\n"), // bare LF: made CRLF
	})
	require.NoError(t, err)
	require.Equal(t, policy.FallbackGlobal, res.Decision.Reason)
	require.Equal(t, `"Alice via Example" <noreply@example.net>`, res.FromHeader())
	require.Equal(t, `"Alice" <alice@gmail.com>`, res.ReplyTo())
	require.Equal(t, "abc", rec.id)
	require.Equal(t, "noreply@example.net", rec.from)
	require.True(t, bytes.HasPrefix(rec.data, []byte("DKIM-Signature:")))
	require.Contains(t, string(rec.data), "\r\nFrom: \"Alice via Example\" <noreply@example.net>\r\n")
	require.True(t, bytes.HasSuffix(rec.data, []byte("\r\n\r\nbody\r\n")))
	require.NotContains(t, strings.ReplaceAll(string(rec.data), "\r\n", ""), "\n", "no bare LF may remain")
}

func TestProcessNoFromHeader(t *testing.T) {
	rec := &recorder{}
	p := New(load(t, ""), rec, nil)
	// Allowed envelope: it becomes the From, unchanged.
	res, err := p.Process(context.Background(), Input{Envelope: "app@example.com", To: []string{"b@d.example"},
		Data: []byte("Subject: hi\r\n\r\nbody\r\n")})
	require.NoError(t, err)
	require.False(t, res.Decision.Rewritten)
	require.Equal(t, "<app@example.com>", res.FromHeader(), "as the message carries it")
	require.Contains(t, string(rec.data), "\r\nFrom: <app@example.com>\r\n")

	// Disallowed envelope: the fallback, with the envelope shown as the original.
	res, err = p.Process(context.Background(), Input{Envelope: "app@gmail.com", To: []string{"b@d.example"},
		Data: []byte("Subject: hi\r\n\r\nbody\r\n")})
	require.NoError(t, err)
	require.True(t, res.Decision.Rewritten)
	require.Equal(t, `"app at gmail.com via Example" <noreply@example.net>`, res.FromHeader())
	require.Contains(t, string(rec.data), "\r\nFrom: \"app at gmail.com via Example\" <noreply@example.net>\r\n")
}

func TestProcessUnitHeader(t *testing.T) {
	p := New(load(t, "[smtp]\ntrust_unit_header = true"), nil, nil)
	msg := []byte("X-Relay-Unit: sales\r\nFrom: a@gmail.com\r\n\r\nbody\r\n")
	res, err := p.Process(context.Background(), Input{Data: msg, NetworkAllowed: true})
	require.NoError(t, err)
	require.Equal(t, "sales", res.Decision.Unit)
	require.Equal(t, "sales@example.com", res.Decision.From)
	require.NotContains(t, string(res.Message), "X-Relay-Unit")

	res, err = p.Process(context.Background(), Input{Data: msg})
	require.NoError(t, err)
	require.Equal(t, "", res.Decision.Unit, "the header counts only when the client may use it")
	require.NotContains(t, string(res.Message), "X-Relay-Unit")

	p = New(load(t, ""), nil, nil)
	res, err = p.Process(context.Background(), Input{Data: msg, NetworkAllowed: true})
	require.NoError(t, err)
	require.Equal(t, "", res.Decision.Unit, "nor without trust_unit_header")
}

func TestProcessSwap(t *testing.T) {
	p := New(load(t, ""), nil, nil)
	msg := []byte("From: a@partner.example\r\n\r\nbody\r\n")
	res, err := p.Process(context.Background(), Input{Data: msg})
	require.NoError(t, err)
	require.True(t, res.Decision.Rewritten)
	p.Swap(load(t, "")) // a reload with another config takes effect for the next message
	st := load(t, "")
	st.Config.Sender.Domains = append(st.Config.Sender.Domains, "partner.example")
	p.Swap(st)
	res, err = p.Process(context.Background(), Input{Data: msg})
	require.NoError(t, err)
	require.False(t, res.Decision.Rewritten)
}

func TestCRLF(t *testing.T) {
	for in, want := range map[string]string{
		"":               "",
		"a\r\nb\r\n":     "a\r\nb\r\n",
		"a\nb\n":         "a\r\nb\r\n",
		"a\r\nb\nc\r\n":  "a\r\nb\r\nc\r\n",
		"\n":             "\r\n",
		"no line ending": "no line ending",
		// Bare CRs (SPEC §7), never written as CR CR LF.
		"a\rb\r\n":   "a\r\nb\r\n",
		"last\r\r\n": "last\r\n\r\n",
		"x\r":        "x\r\n",
		"\r\r\r\n":   "\r\n\r\n\r\n",
		"a\n\rb":     "a\r\n\r\nb",
		// End-of-data look-alikes become real lines, which the upstream's client
		// dot-stuffs; none survives as it was.
		"a\r.\r\nb": "a\r\n.\r\nb",
		"a\n.\nb":   "a\r\n.\r\nb",
		"a\n.\r\nb": "a\r\n.\r\nb",
	} {
		got := CRLF([]byte(in))
		require.Equal(t, want, string(got), "%q", in)
		require.Equal(t, bytes.Count(got, []byte("\r")), bytes.Count(got, []byte("\r\n")), "%q: a bare CR is left", in)
		require.Equal(t, bytes.Count(got, []byte("\n")), bytes.Count(got, []byte("\r\n")), "%q: a bare LF is left", in)
	}
}

func FuzzCRLF(f *testing.F) {
	for _, s := range []string{"", "a\r\n", "a\rb", "\r\r\n", "a\n.\n", "\n\r"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		got := CRLF(in)
		pairs := bytes.Count(got, []byte("\r\n"))
		require.Equal(t, pairs, bytes.Count(got, []byte("\r")), "bare CR left in %q", got)
		require.Equal(t, pairs, bytes.Count(got, []byte("\n")), "bare LF left in %q", got)
		// Every line end of the input is one line end of the output, and nothing else
		// changes: the non-CR/LF octets are the same, in order.
		strip := func(b []byte) []byte {
			return bytes.Map(func(r rune) rune {
				if r == '\r' || r == '\n' {
					return -1
				}
				return r
			}, b)
		}
		require.Equal(t, strip(in), strip(got))
		require.Equal(t, got, CRLF(got), "normalising twice changes nothing")
	})
}

func TestHeaderLimit(t *testing.T) {
	p := New(load(t, "[smtp]\nmax_header_bytes = 100"), nil, nil)
	small := []byte("From: a@example.com\r\nSubject: x\r\n\r\n" + strings.Repeat("body\r\n", 100))
	_, err := p.Process(context.Background(), Input{Data: small})
	require.NoError(t, err)
	big := []byte("From: a@example.com\r\nSubject: " + strings.Repeat("x", 100) + "\r\n\r\nbody\r\n")
	_, err = p.Process(context.Background(), Input{Data: big})
	var he *HeaderTooLargeError
	require.ErrorAs(t, err, &he)
	code, enh, _ := he.SMTPReply()
	require.Equal(t, 552, code)
	require.Equal(t, [3]int{5, 3, 4}, enh)
	// A message that is all header counts whole.
	_, err = p.Process(context.Background(), Input{Data: []byte("From: a@example.com\r\nX: " + strings.Repeat("y", 100))})
	require.ErrorAs(t, err, &he)

	require.Equal(t, 2, HeaderLen([]byte("\r\nbody")))
	require.Equal(t, 8, HeaderLen([]byte("X: y\r\n\r\nbody")))
	require.Equal(t, 4, HeaderLen([]byte("X: y")))
}

// TestBareCRHidesNoFrom: a From behind a bare CR in another header line is a second From
// once normalised (what a receiver that splits on CR sees), so the message is refused
// rather than forwarded with a From the relay never judged.
func TestBareCRHidesNoFrom(t *testing.T) {
	p := New(load(t, ""), nil, nil)
	_, err := p.Process(context.Background(), Input{Data: []byte("From: a@example.com\r\nSubject: x\rFrom: evil@attacker.example\r\n\r\nbody\r\n")})
	require.Error(t, err)
	require.Contains(t, err.Error(), "From")
	var r interface{ SMTPReply() (int, [3]int, string) }
	require.ErrorAs(t, err, &r)
	code, _, _ := r.SMTPReply()
	require.Equal(t, 550, code)
}

// BenchmarkPipeline is the per-message cost of policy + rewrite + sign, the work the relay
// adds to each message before the spool. Run it with the signer's BenchmarkBareSignature in
// one command to compare with the signature alone:
//
//	go test -run '^$' -bench 'Pipeline|BareSignature' ./internal/pipeline ./internal/signer
func BenchmarkPipeline(b *testing.B) {
	keys, err := filepath.Abs("../../testdata/keys")
	require.NoError(b, err)
	for _, key := range []struct{ name, file string }{
		{"rsa2048", "default.pem"},
		{"ed25519", "example.com.ed25519.pem"},
	} {
		st := load(b, "")
		st.Config.DKIM.PrivateKey = filepath.Join(keys, key.file)
		st.Config.DKIM.Signer, err = dkimkey.Load(st.Config.DKIM.PrivateKey)
		require.NoError(b, err)
		sg, err := signer.New(st.Config.DKIM)
		require.NoError(b, err)
		st.Signer = sg
		p := New(st, nil, nil)
		for _, size := range []int{1 << 10, 10 << 10, 100 << 10} {
			msg := testMessage(size)
			// metrics=on counts everything the relay counts per message: the pipeline's
			// stages, and what the server's handler, the spool and the queue add.
			for _, m := range []*metrics.Metrics{nil, metrics.New()} {
				name := fmt.Sprintf("%s/%dKB/metrics=off", key.name, size>>10)
				if m != nil {
					name = strings.Replace(name, "=off", "=on", 1)
				}
				b.Run(name, func(b *testing.B) {
					p.Metrics = m
					b.ReportAllocs()
					b.SetBytes(int64(len(msg)))
					for b.Loop() {
						res, err := p.Process(context.Background(), Input{ID: "bench", Envelope: "app@gmail.com",
							To: []string{"bob@dest.example"}, Data: msg})
						if err != nil {
							b.Fatal(err)
						}
						if m != nil {
							start := time.Now()
							m.Received()
							m.Rewritten(res.Decision.Reason)
							m.Since(metrics.StageSpool, start)
							m.Since(metrics.StageDeliver, start)
							m.Deliveries(1, 0, 0)
						}
					}
				})
			}
		}
	}
}

func testMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: \"Alice Smith\" <alice@gmail.com>\r\nTo: bob@dest.example\r\nSubject: quarterly report\r\n" +
		"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMessage-ID: <abc@app.test>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n\r\n")
	line := strings.Repeat("lorem ipsum dolor sit amet ", 2)[:52] + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return b.Bytes()
}

// TestDryRunLogs: a dry run (no Submitter) logs one line per message with the decision, as
// the spool mode's "message accepted" line does (SPEC §10); client values are clipped.
func TestDryRunLogs(t *testing.T) {
	var logs bytes.Buffer
	p := New(load(t, ""), nil, slog.New(slog.NewTextHandler(&logs, nil)))
	long := strings.Repeat("r", 1000) + "@dest.example"
	_, err := p.Process(context.Background(), Input{ID: "dry1", Envelope: "alice@gmail.com",
		To: []string{"bob@dest.example", long}, Data: []byte("From: alice@gmail.com\r\n\r\nbody\r\n"), Client: "192.0.2.7"})
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	require.Len(t, lines, 1, logs.String())
	for _, want := range []string{`msg="message previewed (dry run: not spooled, not sent)"`, "id=dry1", "client=192.0.2.7",
		"from=alice@gmail.com", "effective=noreply@example.net", "reason=fallback-global", "dkim=example.net", "rcpts=2"} {
		require.Contains(t, lines[0], want)
	}
	require.NotContains(t, lines[0], long[:300])
}
