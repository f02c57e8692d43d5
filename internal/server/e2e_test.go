package server

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/stretchr/testify/require"

	"relay/internal/relaytest"
	"relay/internal/smtptest"
)

const msgTmpl = relaytest.MsgTmpl

// TestEndToEndReasons sends one message per policy reason through the real relay to a real
// upstream and checks what the upstream received: From, envelope, Reply-To, signature.
func TestEndToEndReasons(t *testing.T) {
	for _, mode := range []string{"direct", "spool"} {
		t.Run(mode, func(t *testing.T) {
			e := startRelay(t, mode, nil)
			cases := []struct {
				name, from, envelope, unitHeader string
				user                             bool
				wantFrom, wantEnvelope, wantD    string
				wantReplyTo                      string
				rewritten                        bool
			}{
				{name: "allowed-domain", from: `"Alice" <alice@example.com>`, envelope: "alice@example.com",
					wantFrom: `"Alice" <alice@example.com>`, wantEnvelope: "alice@example.com", wantD: "example.com"},
				{name: "allowed subdomain", from: "ops@eu.example.com", envelope: "ops@eu.example.com",
					wantFrom: "ops@eu.example.com", wantEnvelope: "ops@eu.example.com", wantD: "example.com"},
				{name: "unit-domain (AUTH user of unit sales)", from: "bob@partner.example", envelope: "bob@partner.example", user: true,
					wantFrom: "bob@partner.example", wantEnvelope: "bob@partner.example", wantD: "example.net"},
				{name: "spf-pass", from: "app@spf-ok.example", envelope: "app@spf-ok.example",
					wantFrom: "app@spf-ok.example", wantEnvelope: "app@spf-ok.example", wantD: "example.net"},
				{name: "dkim-delegated", from: "news@delegated.example", envelope: "news@delegated.example",
					wantFrom: "news@delegated.example", wantEnvelope: "noreply@example.net", wantD: "delegated.example"},
				{name: "fallback-unit", from: `"Alice Smith" <alice@gmail.com>`, envelope: "alice@gmail.com", user: true,
					wantFrom: `"Alice Smith via Example" <sales@example.com>`, wantEnvelope: "sales@example.com", wantD: "example.com",
					wantReplyTo: `"Alice Smith" <alice@gmail.com>`, rewritten: true},
				{name: "fallback-global", from: "alice@softfail.example", envelope: "alice@softfail.example",
					wantFrom: `"alice at softfail.example via Example" <noreply@example.net>`, wantEnvelope: "noreply@example.net", wantD: "example.net",
					wantReplyTo: "<alice@softfail.example>", rewritten: true},
			}
			for i, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					c, err := smtp.Dial(e.addr)
					require.NoError(t, err)
					defer c.Close()
					require.NoError(t, c.Hello("app.test"))
					if tc.user {
						require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", "crm-secret")))
					}
					msg := fmt.Sprintf(msgTmpl, tc.from)
					rcpt := fmt.Sprintf("rcpt%d@dest.example", i)
					reply, err := smtptest.SendOn(c, tc.envelope, []string{rcpt}, "Bcc: secret@dest.example\r\n"+msg)
					require.NoError(t, err)
					require.Equal(t, 250, reply.Code, reply.Message)
					require.Contains(t, reply.Message, "queued as")

					var got smtptest.Message
					for _, m := range e.sink.Wait(t, i+1) {
						if m.To[0] == rcpt {
							got = m
						}
					}
					require.Equal(t, tc.wantEnvelope, got.From)
					require.Equal(t, []string{tc.wantFrom}, smtptest.Header(got.Data, "From"))
					require.Empty(t, smtptest.Header(got.Data, "Bcc"), "Bcc must be removed")
					require.Len(t, smtptest.Header(got.Data, "Received"), 1)
					if tc.rewritten {
						require.Equal(t, []string{tc.wantReplyTo}, smtptest.Header(got.Data, "Reply-To"))
						require.Len(t, smtptest.Header(got.Data, "X-Original-From"), 1)
					} else {
						require.Empty(t, smtptest.Header(got.Data, "Reply-To"))
						require.Empty(t, smtptest.Header(got.Data, "X-Original-From"))
					}
					require.Equal(t, []byte("Hello Bob,\r\n.leading dot line\r\nthe numbers are attached.\r\n"), smtptest.Body(got.Data))
					ds := e.verifyDKIM(got.Data)
					require.Contains(t, ds, tc.wantD)
				})
			}
		})
	}
}

func TestEndToEndDualSignature(t *testing.T) {
	e := startRelay(t, "direct", nil)
	reply, err := e.send("alice@example.com", []string{"bob@dest.example"}, fmt.Sprintf(msgTmpl, "alice@example.com"))
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	got := e.sink.Wait(t, 1)[0]
	sigs := smtptest.Header(got.Data, "DKIM-Signature")
	require.Len(t, sigs, 2)
	require.Contains(t, sigs[0], "a=ed25519-sha256")
	require.Contains(t, sigs[1], "a=rsa-sha256")
	require.Equal(t, []string{"example.com", "example.com"}, e.verifyDKIM(got.Data))
}

func TestEndToEndUnitHeader(t *testing.T) {
	e := startRelay(t, "direct", func(s string) string {
		return strings.Replace(s, "max_recipients = 5\n", "max_recipients = 5\ntrust_unit_header = true\n", 1)
	})
	msg := "X-Relay-Unit: support\r\n" + fmt.Sprintf(msgTmpl, "alice@gmail.com")
	reply, err := e.send("alice@gmail.com", []string{"bob@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	got := e.sink.Wait(t, 1)[0]
	require.Empty(t, smtptest.Header(got.Data, "X-Relay-Unit"))
	require.Equal(t, "help@example.net", got.From)
	require.Contains(t, smtptest.Header(got.Data, "From")[0], "<help@example.net>")

	reply, err = e.send("alice@gmail.com", []string{"bob@dest.example"}, "X-Relay-Unit: marketing\r\n"+fmt.Sprintf(msgTmpl, "alice@gmail.com"))
	require.NoError(t, err)
	require.Equal(t, 550, reply.Code)
	require.Equal(t, smtp.EnhancedCode{5, 7, 1}, reply.EnhancedCode)
	require.Contains(t, reply.Message, `"marketing"`)
}

func TestEndToEndUnitHeaderIgnoredWhenUntrusted(t *testing.T) {
	e := startRelay(t, "direct", nil)
	reply, err := e.send("alice@gmail.com", []string{"bob@dest.example"}, "X-Relay-Unit: support\r\n"+fmt.Sprintf(msgTmpl, "alice@gmail.com"))
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	got := e.sink.Wait(t, 1)[0]
	require.Empty(t, smtptest.Header(got.Data, "X-Relay-Unit"))
	require.Equal(t, "noreply@example.net", got.From)
}

func TestEndToEndReplies(t *testing.T) {
	e := startRelay(t, "direct", nil)
	msg := fmt.Sprintf(msgTmpl, "alice@example.com")

	t.Run("two From headers: 550 5.6.0", func(t *testing.T) {
		reply, err := e.send("a@example.com", []string{"b@dest.example"}, "From: x@example.com\r\n"+msg)
		require.NoError(t, err)
		require.Equal(t, 550, reply.Code)
		require.Equal(t, smtp.EnhancedCode{5, 6, 0}, reply.EnhancedCode)
	})
	t.Run("too large: 552 5.3.4", func(t *testing.T) {
		reply, err := e.send("a@example.com", []string{"b@dest.example"}, msg+strings.Repeat(strings.Repeat("x", 998)+"\r\n", 250))
		require.NoError(t, err)
		require.Equal(t, 552, reply.Code)
		require.Equal(t, smtp.EnhancedCode{5, 3, 4}, reply.EnhancedCode)
	})
	t.Run("too many recipients: 452 4.5.3", func(t *testing.T) {
		to := []string{"1@d.example", "2@d.example", "3@d.example", "4@d.example", "5@d.example", "6@d.example"}
		reply, err := e.send("a@example.com", to, msg)
		require.NoError(t, err)
		require.Equal(t, 452, reply.Code)
		require.Equal(t, smtp.EnhancedCode{4, 5, 3}, reply.EnhancedCode)
	})
	t.Run("AUTH failure: 535 5.7.8", func(t *testing.T) {
		c, err := smtp.Dial(e.addr)
		require.NoError(t, err)
		defer c.Close()
		err = c.Auth(sasl.NewPlainClient("", "crm", "wrong"))
		reply, _ := asSMTP(err)
		require.NotNil(t, reply)
		require.Equal(t, 535, reply.Code)
		require.Equal(t, smtp.EnhancedCode{5, 7, 8}, reply.EnhancedCode)
	})
	t.Run("upstream 5xx is passed on, nothing sent", func(t *testing.T) {
		e.sink.Reject("nobody@dest.example", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"})
		before := len(e.sink.Messages())
		reply, err := e.send("a@example.com", []string{"ok@dest.example", "nobody@dest.example"}, msg)
		require.NoError(t, err)
		require.Equal(t, 550, reply.Code)
		require.Len(t, e.sink.Messages(), before)
	})
	t.Run("upstream 4xx is passed on as 4xx", func(t *testing.T) {
		e.sink.OnMail(func(string) error {
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "busy"}
		})
		defer e.sink.OnMail(nil)
		reply, err := e.send("a@example.com", []string{"b@dest.example"}, msg)
		require.NoError(t, err)
		require.Equal(t, 4, reply.Code/100)
	})
}

func TestEndToEndAuthRequired(t *testing.T) {
	e := startRelay(t, "direct", func(s string) string {
		return strings.Replace(s, "max_recipients = 5\n", "max_recipients = 5\nallow_networks = []\n", 1)
	})
	msg := fmt.Sprintf(msgTmpl, "alice@example.com")
	reply, err := e.send("a@example.com", []string{"b@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 530, reply.Code)
	require.Equal(t, smtp.EnhancedCode{5, 7, 0}, reply.EnhancedCode)

	c, err := smtp.Dial(e.addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("app.test"))
	require.NoError(t, c.Auth(sasl.NewPlainClient("", "crm", "crm-secret")))
	reply, err = smtptest.SendOn(c, "a@example.com", []string{"b@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
}

// An internal fault (here: the outbox directory is a regular file, so no message can be
// written) must answer 451 4.3.0, never a permanent error and never 250.
func TestEndToEndInternalFault(t *testing.T) {
	outbox := t.TempDir() + "/outbox"
	e := startRelay(t, "direct", func(s string) string {
		return regexp.MustCompile(`(?m)^address = .*$`).ReplaceAllString(s, `address = "file:`+outbox+`"`)
	})
	require.NoError(t, os.RemoveAll(outbox))
	require.NoError(t, os.WriteFile(outbox, []byte("not a directory"), 0o600))
	reply, err := e.send("a@example.com", []string{"b@dest.example"}, fmt.Sprintf(msgTmpl, "alice@example.com"))
	require.NoError(t, err)
	require.Equal(t, 451, reply.Code, reply.Message)
	require.Equal(t, smtp.EnhancedCode{4, 3, 0}, reply.EnhancedCode)
}

func TestEndToEndDryRun(t *testing.T) {
	e := startRelay(t, "dry-run", nil)
	reply, err := e.send("alice@gmail.com", []string{"b@dest.example"}, fmt.Sprintf(msgTmpl, "alice@gmail.com"))
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code)
	require.Equal(t, "dry run: would send as <noreply@example.net> (fallback-global)", reply.Message)
	require.Empty(t, e.sink.Messages())
}

func TestEndToEndSTARTTLSNotOfferedWithoutCert(t *testing.T) {
	e := startRelay(t, "direct", nil)
	c, err := smtp.Dial(e.addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Hello("app.test"))
	ok, _ := c.Extension("STARTTLS")
	require.False(t, ok)
}

// The rewrite rules over the wire: an existing Reply-To is kept, a Sender of a disallowed
// domain is removed, Date and Message-ID are added when missing, and every other header
// line and the body pass byte for byte.
func TestEndToEndRewriteRules(t *testing.T) {
	e := startRelay(t, "direct", nil)
	msg := "From: \"Zoë Müller\" <zoe@gmail.com>\r\n" +
		"Sender: app@gmail.com\r\n" +
		"Reply-To: support@customer.example\r\n" +
		"To: bob@dest.example\r\n" +
		"X-Custom:  odd   spacing\r\n" +
		"\tfolded continuation\r\n" +
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" +
		"\r\n" +
		"body line 1\r\n" +
		"\r\n" +
		"..dot-stuffed line\r\n"
	reply, err := e.send("app@gmail.com", []string{"bob@dest.example"}, msg)
	require.NoError(t, err)
	require.Equal(t, 250, reply.Code, reply.Message)
	got := e.sink.Wait(t, 1)[0]
	from := smtptest.Header(got.Data, "From")
	require.Len(t, from, 1)
	require.Contains(t, from[0], "=?utf-8?")
	require.True(t, strings.HasSuffix(from[0], "<noreply@example.net>"), from[0])
	require.Equal(t, []string{"support@customer.example"}, smtptest.Header(got.Data, "Reply-To"), "an existing Reply-To is kept")
	require.Empty(t, smtptest.Header(got.Data, "Sender"), "a Sender of a disallowed domain is removed")
	require.Equal(t, []string{`"Zoë Müller" <zoe@gmail.com>`}, smtptest.Header(got.Data, "X-Original-From"))
	require.Len(t, smtptest.Header(got.Data, "Date"), 1)
	require.Len(t, smtptest.Header(got.Data, "Message-ID"), 1)
	require.Contains(t, string(got.Data), "\r\nX-Custom:  odd   spacing\r\n\tfolded continuation\r\n")
	require.Contains(t, string(got.Data), "\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n")
	require.Equal(t, "body line 1\r\n\r\n..dot-stuffed line\r\n", string(smtptest.Body(got.Data)))
	e.verifyDKIM(got.Data)
}
