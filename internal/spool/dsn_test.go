package spool

import (
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestDSNGolden renders reports to testdata/NN-name.dsn; review the diff after -update.
func TestDSNGolden(t *testing.T) {
	arrival := time.Date(2026, 3, 1, 9, 30, 0, 0, time.UTC)
	date := arrival.Add(2 * time.Hour)
	header := headerSection(msg("hello"))
	for _, tc := range []struct {
		file string
		r    report
	}{
		{"01-rejected.dsn", report{
			Hostname: "relay.example.net", ID: "abc123", Sender: "alice@example.com", Arrival: arrival, Date: date, Header: header,
			Failed: []outcome{{"bob@example.net", [3]int{5, 1, 1}, "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in virtual mailbox table", true}},
		}},
		{"02-several.dsn", report{
			Hostname: "relay.example.net", ID: "abc124", Sender: "alice@example.com", Arrival: arrival, Date: date, Header: header,
			Failed: []outcome{
				{"bob@example.net", [3]int{5, 1, 1}, "550 5.1.1 no such user", true},
				{"carol@example.org", [3]int{5, 2, 2}, "552 5.2.2 mailbox full", true},
			},
		}},
		{"03-expired.dsn", report{
			Hostname: "relay.example.net", ID: "abc125", Sender: "alice@example.com", Arrival: arrival, Date: date, Header: header,
			Failed: []outcome{
				{"bob@example.net", [3]int{4, 4, 7}, "451 4.7.1 greylisted, try again later", true},
				{"dan@example.org", [3]int{4, 4, 7}, "upstream: smtp.provider.net:587: dial tcp 192.0.2.1:587: connect: connection refused", false},
			},
		}},
		{"04-utf8.dsn", report{
			Hostname: "relay.example.net", ID: "abc126", Sender: "alice@example.com", Arrival: arrival, Date: date,
			Header: []byte("From: Zoë <zoe@example.com>\r\nSubject: héllo\r\n"),
			Failed: []outcome{{"jörg@exämple.de", [3]int{5, 1, 1}, "550 5.1.1 unknown user", true}},
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got := buildDSN(tc.r)
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
				require.Contains(t, p.perRcpt[i].Get("Final-Recipient"), f.rcpt)
				require.Equal(t, "failed", p.perRcpt[i].Get("Action"))
				require.Contains(t, p.perRcpt[i].Get("Diagnostic-Code"), f.diag)
			}
			for _, line := range splitLines(got) {
				require.LessOrEqual(t, len(line), 998, "RFC 5322 line limit")
			}
		})
	}
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
