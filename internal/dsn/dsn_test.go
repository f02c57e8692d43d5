package dsn

import (
	"bufio"
	"flag"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func msg(subject string) []byte {
	return []byte("From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@example.com>\r\n\r\nHello.\r\n")
}

// parsedDSN is a DSN taken apart with the standard library, as a receiver would.
type parsedDSN struct {
	header     mail.Header
	text       string
	perMessage textproto.MIMEHeader
	perRcpt    []textproto.MIMEHeader
	headers    string // the text/rfc822-headers part
	types      []string
}

func parseDSN(t *testing.T, b []byte) parsedDSN {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(string(b)))
	require.NoError(t, err)
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	require.NoError(t, err)
	require.Equal(t, "multipart/report", mt)
	require.Equal(t, "delivery-status", params["report-type"])
	p := parsedDSN{header: m.Header}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		ct, _, err := mime.ParseMediaType(part.Header.Get("Content-Type"))
		require.NoError(t, err)
		p.types = append(p.types, ct)
		body, err := io.ReadAll(part) // multipart decodes quoted-printable itself
		require.NoError(t, err)
		switch ct {
		case "text/plain":
			p.text = string(body)
		case "message/delivery-status", "message/global-delivery-status":
			// RFC 3464 §2.1: groups of fields separated by blank lines.
			r := textproto.NewReader(bufio.NewReader(strings.NewReader(string(body))))
			p.perMessage, err = r.ReadMIMEHeader()
			require.NoError(t, err)
			for {
				h, err := r.ReadMIMEHeader()
				if len(h) > 0 {
					p.perRcpt = append(p.perRcpt, h)
				}
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
			}
		case "text/rfc822-headers", "message/global-headers":
			p.headers = string(body)
		}
	}
	return p
}

// TestDSNGolden renders reports to testdata/NN-name.dsn; review the diff after -update.
func TestDSNGolden(t *testing.T) {
	arrival := time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	date := arrival.Add(2 * time.Hour)
	for _, tc := range []struct {
		file string
		r    Report
	}{
		{"01-rejected.dsn", Report{
			ID: "abc123", Sender: "alice@example.com", Arrival: arrival, Date: date, Message: msg("hello"),
			Failed: []Recipient{{"bob@example.net", [3]int{5, 1, 1}, "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table", true}},
		}},
		{"02-several.dsn", Report{
			ID: "abc124", Sender: "alice@example.com", Arrival: arrival, Date: date, Message: msg("hello"),
			Failed: []Recipient{
				{"bob@example.net", [3]int{5, 1, 1}, "550 5.1.1 no such user", true},
				{"carol@example.org", [3]int{5, 2, 2}, "552 5.2.2 mailbox full", true},
			},
		}},
		{"03-expired.dsn", Report{
			ID: "abc125", Sender: "alice@example.com", Arrival: arrival, Date: date, Message: msg("hello"),
			Failed: []Recipient{
				{"bob@example.net", [3]int{4, 4, 7}, "451 4.7.1 greylisted, try again later", true},
				{"dan@example.org", [3]int{4, 4, 7}, "upstream: smtp.provider.net:587: dial tcp 192.0.2.1:587: connect: connection refused", false},
			},
		}},
		{"04-utf8.dsn", Report{
			ID: "abc126", Sender: "alice@example.com", Arrival: arrival, Date: date,
			Message: []byte("From: Zoë <zoe@example.com>\r\nSubject: héllo\r\n"),
			Failed:  []Recipient{{"jörg@exämple.de", [3]int{5, 1, 1}, "550 5.1.1 unknown user", true}},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got := Build(tc.r, "relay.example.net")
			path := filepath.Join("testdata", tc.file)
			if *update {
				require.NoError(t, os.WriteFile(path, got, 0o644))
			}
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, string(want), string(got))

			p := parseDSN(t, got)
			require.Len(t, p.perRcpt, len(tc.r.Failed))
			for i, f := range tc.r.Failed {
				require.Contains(t, p.perRcpt[i].Get("Final-Recipient"), f.Addr)
				require.Equal(t, "failed", p.perRcpt[i].Get("Action"))
				require.Contains(t, p.perRcpt[i].Get("Diagnostic-Code"), f.Diag)
			}
			for _, line := range splitLines(got) {
				require.LessOrEqual(t, len(line), 998, "RFC 5322 line limit")
			}
		})
	}
}

// The reports internal/queue makes (its TestPermanentFailureDSN, TestMaxAgeDSN and
// TestTransactionRefusedBouncesAll), as a receiver reads them.
func TestBuildQueueReports(t *testing.T) {
	arrival := time.Now().Add(-time.Minute)
	t.Run("refused recipients", func(t *testing.T) {
		p := parseDSN(t, Build(Report{
			ID: "q1", Sender: "alice@example.com", Arrival: arrival, Date: time.Now(), Message: msg("perm"),
			Failed: []Recipient{
				{Addr: "gone@example.net", Status: [3]int{5, 1, 1}, Diag: "550 5.1.1 no such user", Reply: true},
				{Addr: "full@example.net", Status: [3]int{5, 2, 2}, Diag: "552 5.2.2 mailbox full", Reply: true},
			},
		}, "relay.test"))
		require.Equal(t, []string{"text/plain", "message/delivery-status", "text/rfc822-headers"}, p.types)
		require.Equal(t, "<alice@example.com>", p.header.Get("To"))
		require.Equal(t, "auto-replied", p.header.Get("Auto-Submitted"))
		require.Contains(t, p.header.Get("From"), "MAILER-DAEMON@relay.test")
		require.Equal(t, "dns; relay.test", p.perMessage.Get("Reporting-MTA"))
		_, err := mail.ParseDate(p.perMessage.Get("Arrival-Date"))
		require.NoError(t, err)
		require.Len(t, p.perRcpt, 2)
		require.Equal(t, "rfc822; gone@example.net", p.perRcpt[0].Get("Final-Recipient"))
		require.Equal(t, "failed", p.perRcpt[0].Get("Action"))
		require.Equal(t, "5.1.1", p.perRcpt[0].Get("Status"))
		require.Equal(t, "smtp; 550 5.1.1 no such user", p.perRcpt[0].Get("Diagnostic-Code"))
		require.Equal(t, "rfc822; full@example.net", p.perRcpt[1].Get("Final-Recipient"))
		require.Equal(t, "5.2.2", p.perRcpt[1].Get("Status"))
		require.Equal(t, "smtp; 552 5.2.2 mailbox full", p.perRcpt[1].Get("Diagnostic-Code"))
		require.Contains(t, p.text, "<gone@example.net>: 550 5.1.1 no such user")
		require.Contains(t, p.headers, "Subject: perm\r\n")
		require.NotContains(t, p.headers, "Hello.", "headers only")
	})
	t.Run("expired", func(t *testing.T) {
		p := parseDSN(t, Build(Report{
			ID: "old", Sender: "alice@example.com", Arrival: arrival, Date: time.Now(), Message: msg("old"),
			Failed: []Recipient{{Addr: "slow@example.net", Status: [3]int{4, 4, 7}, Diag: "451 4.7.0 greylisted", Reply: true}},
		}, "relay.test"))
		require.Len(t, p.perRcpt, 1)
		require.Equal(t, "rfc822; slow@example.net", p.perRcpt[0].Get("Final-Recipient"))
		require.Equal(t, "failed", p.perRcpt[0].Get("Action"))
		require.Equal(t, "4.4.7", p.perRcpt[0].Get("Status"))
		require.Equal(t, "smtp; 451 4.7.0 greylisted", p.perRcpt[0].Get("Diagnostic-Code"))
		require.Contains(t, p.text, "delivery time expired")
	})
	t.Run("transaction refused", func(t *testing.T) {
		p := parseDSN(t, Build(Report{
			ID: "tx", Sender: "alice@example.com", Arrival: arrival, Date: time.Now(), Message: msg("tx"),
			Failed: []Recipient{
				{Addr: "a@example.net", Status: [3]int{5, 7, 1}, Diag: "550 5.7.1 sender rejected", Reply: true},
				{Addr: "b@example.net", Status: [3]int{5, 7, 1}, Diag: "550 5.7.1 sender rejected", Reply: true},
			},
		}, "relay.test"))
		require.Len(t, p.perRcpt, 2)
		require.Equal(t, "smtp; 550 5.7.1 sender rejected", p.perRcpt[1].Get("Diagnostic-Code"))
	})
}

func splitLines(b []byte) []string {
	var out []string
	start := 0
	for i := range b {
		if b[i] == '\n' {
			out = append(out, string(b[start:i]))
			start = i + 1
		}
	}
	return out
}

func TestHeaderSection(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"crlf", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
		{"bare lf", "A: 1\nB: 2\n\nbody\n", "A: 1\r\nB: 2\r\n"},
		{"folded", "A: 1\r\n 2\r\n\r\n", "A: 1\r\n 2\r\n"},
		{"no body", "A: 1\r\n", "A: 1\r\n"},
		{"empty", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, string(headerSection([]byte(tc.in))))
		})
	}
}
