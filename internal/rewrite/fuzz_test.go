package rewrite

import (
	"bytes"
	"errors"
	"net/mail"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// FuzzApply runs Parse, From and Apply over any data and display-name template, with and
// without rewriting, and checks verify's invariants: Apply never panics, its output parses
// again with at most one From (exactly one when rewriting), the body is unchanged, no Bcc or
// X-Relay-Unit is left, the input's other fields are all there byte for byte, and the fields
// Apply wrote end in CRLF with no other CR or LF; and AppendApply writes the same after a
// prefix.
func FuzzApply(f *testing.F) {
	msgs, err := filepath.Glob("testdata/*.msg")
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range msgs {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, "{name} via {unit}", true)
		f.Add(data, "{name} <{address}>\r\n\x00=?utf-8?q?x?=", true)
		f.Add(data, "", false)
	}
	cet := time.FixedZone("CET", 3600)
	f.Fuzz(func(t *testing.T, data []byte, template string, rewrite bool) {
		m, err := Parse(data)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("Parse error %T is not a *ParseError: %v", err, err)
			}
			return
		}
		original, err := m.From()
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("From error %T is not a *ParseError: %v", err, err)
			}
			original = nil
		}
		if original == nil && rewrite {
			original = &mail.Address{Name: template, Address: "envelope@example.org"}
		}
		o := Options{
			Rewrite: rewrite, NewFrom: "fallback@example.com", Original: original,
			DisplayName: template, Unit: "Sales", ReplyToOriginal: true,
			OriginalHeader: "X-Original-From", SenderAllowed: allowDomains("example.com"),
			Hostname: "relay.example.net",
			Received: Received{Helo: "client.example", ClientIP: "192.0.2.1", Proto: "ESMTP", ID: "Q1", For: "bob@example.org",
				Time: time.Date(2026, 3, 2, 10, 0, 0, 0, cet)},
			Now:       time.Date(2026, 3, 2, 10, 0, 1, 0, cet),
			MessageID: "fuzz",
		}
		out := Apply(m, o)
		if err := verify(m, o, out); err != nil {
			t.Fatalf("%v\ninput:  %q\noutput: %q", err, data, out)
		}
		prefix := []byte("DKIM-Signature: x\r\n")
		if got := AppendApply(prefix, m, o); !bytes.Equal(got, append(prefix, out...)) {
			t.Fatalf("AppendApply differs from Apply\ninput:    %q\nApply:    %q\nAppend:   %q", data, out, got)
		}
	})
}
