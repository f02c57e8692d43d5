package rewrite

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// benchMessage returns a typical application message of about size bytes: a dozen header
// fields, one folded, and a body of 76-character lines.
func benchMessage(size int) []byte {
	var b strings.Builder
	b.WriteString("Received: from app.internal (app.internal [10.0.0.5])\r\n\tby gw.internal with ESMTP id 1A2B3C; Mon, 02 Mar 2026 09:58:00 +0100\r\n" +
		"From: Alice Example <alice@gmail.com>\r\nTo: Bob <bob@example.org>,\r\n Carol <carol@example.org>\r\n" +
		"Bcc: dave@example.org\r\nX-Relay-Unit: sales\r\nSubject: Quarterly figures\r\n" +
		"Date: Mon, 02 Mar 2026 09:58:00 +0100\r\nMessage-ID: <a1@app.example.com>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\nX-Mailer: app 1.0\r\n\r\n")
	line := strings.Repeat("x", 74) + "\r\n"
	for b.Len() < size {
		b.WriteString(line)
	}
	return []byte(b.String())
}

func BenchmarkParseApply(b *testing.B) {
	for _, size := range []int{1 << 10, 10 << 10, 100 << 10} {
		data := benchMessage(size)
		b.Run(fmt.Sprintf("%dKB", size>>10), func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				m, err := Parse(data)
				if err != nil {
					b.Fatal(err)
				}
				original, err := m.From()
				if err != nil {
					b.Fatal(err)
				}
				Apply(m, Options{
					Rewrite: true, NewFrom: "sales@example.com", Original: original,
					DisplayName: "{name} via {unit}", Unit: "Sales", ReplyToOriginal: true,
					OriginalHeader: "X-Original-From", SenderAllowed: allowDomains("example.com"),
					Hostname: "relay.example.net",
					Received: Received{Helo: "app.example.com", ClientIP: "192.0.2.10", Proto: "ESMTPS", ID: "4Zq9Tb2Kx1", For: "bob@example.org"},
					Now:      time.Date(2026, 3, 2, 10, 0, 1, 0, time.UTC), MessageID: "x",
				})
			}
		})
	}
}
