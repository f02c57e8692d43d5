package rewrite

import (
	"encoding/json"
	"errors"
	"flag"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var update = flag.Bool("update", false, "rewrite the .golden files of testdata")

// caseOpts is a testdata/NN-name.opts.json file: the Options of one golden case, as
// overrides of defaultOpts. Original is not in it: it comes from the message's From, as
// the pipeline gets it.
type caseOpts struct {
	Why             string       `json:"why"`
	Rewrite         bool         `json:"rewrite"`
	NewFrom         string       `json:"new_from"`
	DisplayName     string       `json:"display_name"`
	Unit            string       `json:"unit"`
	ReplyToOriginal bool         `json:"reply_to_original"`
	OriginalHeader  string       `json:"original_header"`
	AllowedDomains  []string     `json:"allowed_sender_domains"`
	Hostname        string       `json:"hostname"`
	Received        caseReceived `json:"received"`
	Now             time.Time    `json:"now"`
	MessageID       string       `json:"message_id"`
}

type caseReceived struct {
	Helo     string    `json:"helo"`
	ClientIP string    `json:"client_ip"`
	Proto    string    `json:"proto"`
	ID       string    `json:"id"`
	For      string    `json:"for"`
	Time     time.Time `json:"time"`
}

func defaultOpts() caseOpts {
	cet := time.FixedZone("CET", 3600)
	return caseOpts{
		NewFrom:         "sales@example.com",
		DisplayName:     "{name} via {unit}",
		Unit:            "Sales",
		ReplyToOriginal: true,
		OriginalHeader:  "X-Original-From",
		AllowedDomains:  []string{"example.com"},
		Hostname:        "relay.example.net",
		Received: caseReceived{
			Helo: "app.example.com", ClientIP: "192.0.2.10", Proto: "ESMTPS",
			ID: "4Zq9Tb2Kx1", For: "bob@example.org",
			Time: time.Date(2026, 3, 2, 10, 0, 0, 0, cet),
		},
		Now:       time.Date(2026, 3, 2, 10, 0, 1, 0, cet),
		MessageID: "20260302100001.4Zq9Tb2Kx1",
	}
}

func (c caseOpts) options(original *mail.Address) Options {
	return Options{
		Rewrite: c.Rewrite, NewFrom: c.NewFrom, Original: original,
		DisplayName: c.DisplayName, Unit: c.Unit,
		ReplyToOriginal: c.ReplyToOriginal, OriginalHeader: c.OriginalHeader,
		SenderAllowed: allowDomains(c.AllowedDomains...),
		Hostname:      c.Hostname,
		Received:      Received(c.Received),
		Now:           c.Now,
		MessageID:     c.MessageID,
	}
}

func allowDomains(domains ...string) func(string) bool {
	return func(addr string) bool {
		at := strings.LastIndexByte(addr, '@')
		for _, d := range domains {
			if at >= 0 && strings.EqualFold(addr[at+1:], d) {
				return true
			}
		}
		return false
	}
}

// TestGolden runs every testdata/NN-name.msg through Parse, From and Apply with the options
// of NN-name.opts.json and compares the result with NN-name.golden (go test -update writes
// it; review the diff).
func TestGolden(t *testing.T) {
	msgs, err := filepath.Glob("testdata/*.msg")
	require.NoError(t, err)
	require.NotEmpty(t, msgs)
	for _, path := range msgs {
		base := strings.TrimSuffix(path, ".msg")
		t.Run(filepath.Base(base), func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			c := defaultOpts()
			js, err := os.ReadFile(base + ".opts.json")
			require.NoError(t, err)
			dec := json.NewDecoder(strings.NewReader(string(js)))
			dec.DisallowUnknownFields()
			require.NoError(t, dec.Decode(&c))

			m, err := Parse(data)
			require.NoError(t, err)
			original, err := m.From()
			require.NoError(t, err)
			o := c.options(original)
			got := Apply(m, o)
			require.NoError(t, verify(m, o, got))

			if *update {
				require.NoError(t, os.WriteFile(base+".golden", got, 0o644))
				return
			}
			want, err := os.ReadFile(base + ".golden")
			require.NoError(t, err)
			require.Equal(t, string(want), string(got), c.Why)
		})
	}
}

type replier interface {
	SMTPReply() (int, [3]int, string)
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, data, reason string
		from               bool // the error comes from From(), not Parse
	}{
		{name: "two From", data: "From: a@example.com\r\nTo: b@example.org\r\nfrom: c@example.com\r\n\r\nbody\r\n", reason: "message has 2 From headers"},
		{name: "three From", data: "From: a@example.com\r\nFrom: b@example.com\r\nFROM: c@example.com\r\n\r\n", reason: "message has 3 From headers"},
		{name: "garbage line", data: "From: a@example.com\r\nthis is not a header\r\n\r\nbody\r\n", reason: "malformed header line 2"},
		{name: "mbox From_ line", data: "From alice@example.com Mon Mar  2 10:00:00 2026\nFrom: a@example.com\n\n", reason: "malformed header line 1"},
		{name: "leading continuation", data: " folded: nothing\r\nFrom: a@example.com\r\n\r\n", reason: "header line 1 is a continuation line without a field before it"},
		{name: "empty field name", data: "From: a@example.com\r\n: value\r\n\r\n", reason: "malformed header line 2"},
		{name: "8-bit field name", data: "From: a@example.com\r\nSubjéct: x\r\n\r\n", reason: "malformed header line 2"},
		{name: "control in field name", data: "To: b@example.org\r\nX-\x01: x\r\n\r\n", reason: "malformed header line 2"},
		{name: "header ends in bare CR", data: "To: b@example.org\r\n\r", reason: "malformed header line 2"},
		{name: "From with two addresses", data: "From: Alice <a@example.com>, Bob <b@example.com>\r\n\r\n", reason: "From header with more than one address", from: true},
		{name: "From group with two addresses", data: "From: team: a@example.com, b@example.com;\r\n\r\n", reason: "From header with more than one address", from: true},
		{name: "unparsable From", data: "From: Alice <alice@\r\n\r\n", reason: "unparsable From header: ", from: true},
		{name: "From without @", data: "From: alice\r\n\r\n", reason: "unparsable From header: ", from: true},
		{name: "empty From", data: "From:\r\n\r\n", reason: "unparsable From header: no address", from: true},
		{name: "empty group From", data: "From: undisclosed-recipients:;\r\n\r\n", reason: "From header without an address", from: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Parse([]byte(tc.data))
			if tc.from {
				require.NoError(t, err)
				var a *mail.Address
				a, err = m.From()
				require.Nil(t, a)
			}
			require.Error(t, err)
			var pe *ParseError
			require.True(t, errors.As(err, &pe), "%T is not a *ParseError", err)
			require.True(t, strings.HasPrefix(pe.Reason, tc.reason), "reason %q, want prefix %q", pe.Reason, tc.reason)
			var r replier
			require.True(t, errors.As(err, &r))
			code, enh, msg := r.SMTPReply()
			require.Equal(t, 550, code)
			require.Equal(t, [3]int{5, 6, 0}, enh)
			require.Equal(t, pe.Reason, msg)
		})
	}
}

func TestParse(t *testing.T) {
	data := []byte("Received: from x\r\n\tby y; Mon, 2 Mar 2026 10:00:00 +0100\r\n" +
		"From: \"Alice\r\n Example\" <alice@gmail.com>\r\nsubject : folded\r\n  subject\r\n" +
		"X-Empty:\r\n\r\nbody\r\n\r\nFrom: not a header\r\n")
	m, err := Parse(data)
	require.NoError(t, err)
	require.Len(t, m.Fields, 4)
	require.Equal(t, "From", m.Fields[1].Name)
	require.Equal(t, "subject", m.Fields[2].Name)
	require.Equal(t, "subject : folded\r\n  subject\r\n", string(m.Fields[2].Raw))
	require.Equal(t, "\r\n", string(m.Separator))
	require.Equal(t, "body\r\n\r\nFrom: not a header\r\n", string(m.Body))

	v, ok := m.Get("SUBJECT")
	require.True(t, ok)
	require.Equal(t, "folded  subject", v)
	v, ok = m.Get("x-empty")
	require.True(t, ok)
	require.Equal(t, "", v)
	_, ok = m.Get("To")
	require.False(t, ok)
	require.True(t, m.Has("received"))
	require.False(t, m.Has("Bcc"))

	a, err := m.From()
	require.NoError(t, err)
	require.Equal(t, &mail.Address{Name: "Alice Example", Address: "alice@gmail.com"}, a)

	// Raw and Body slice the input: no copies, and capped so appending cannot clobber it.
	require.Same(t, &data[0], &m.Fields[0].Raw[0])
	require.Equal(t, len(m.Fields[0].Raw), cap(m.Fields[0].Raw))

	m, err = Parse(nil)
	require.NoError(t, err)
	require.Empty(t, m.Fields)
	a, err = m.From()
	require.NoError(t, err)
	require.Nil(t, a)
}

func TestFromCharsets(t *testing.T) {
	for _, tc := range []struct{ from, name string }{
		{"=?utf-8?q?J=C3=B6rg?= <j@example.de>", "Jörg"},
		{"=?us-ascii?q?Bob?= <b@example.com>", "Bob"},
		{"=?ISO-8859-1?Q?Jos=E9?= <j@example.es>", "José"},
		{"=?latin1?Q?Jos=E9?= <j@example.es>", "José"},
		{"=?windows-1252?q?=80uro_=93quoted=94?= <e@example.com>", "€uro “quoted”"},
		{"=?iso-8859-15?q?=A4?= <e@example.com>", "€"},
		{"=?koi8-r?b?4czJ08E=?= <a@example.ru>", "\uFFFD"},
		{"=?iso-2022-jp?b?GyRCJDMkcxsoQg==?= <a@example.jp>", "\uFFFD"},
		{"Jos\xe9 <j@example.es>", "José"},
		{"Zoë <z@example.org>", "Zoë"},
	} {
		m, err := Parse([]byte("From: " + tc.from + "\r\n\r\n"))
		require.NoError(t, err)
		a, err := m.From()
		require.NoError(t, err, tc.from)
		require.Equal(t, tc.name, a.Name, tc.from)
	}
}

// rewrittenFrom is the From field (unfolded) of a message whose From, with display name
// and address, is rewritten to newAddr under template.
func rewrittenFrom(t *testing.T, template, name, addr, unit, newAddr string) string {
	t.Helper()
	in := "Subject: x\r\n\r\nbody\r\n"
	var orig *mail.Address
	if addr != "" || name != "" {
		orig = &mail.Address{Name: name, Address: addr}
		in = "From: <" + addr + ">\r\n" + in
	}
	m, err := Parse([]byte(in))
	require.NoError(t, err)
	out, err := Parse(Apply(m, Options{Rewrite: true, NewFrom: newAddr, Original: orig, DisplayName: template,
		Unit: unit, Hostname: "relay.test", Now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), MessageID: "id"}))
	require.NoError(t, err)
	v, ok := out.Get("From")
	require.True(t, ok)
	return v
}

// TestRewrittenFrom: the display name rules of SPEC §5, as the outgoing message carries
// them.
func TestRewrittenFrom(t *testing.T) {
	const to = "sales@example.com"
	for _, tc := range []struct {
		name, template, dname, addr, unit, want string
	}{
		{"name", "{name} via {unit}", "Alice", "alice@gmail.com", "Sales", `"Alice via Sales" <sales@example.com>`},
		{"no name uses address", "{name} via Example", "", "alice@gmail.com", "", `"alice at gmail.com via Example" <sales@example.com>`},
		{"blank name uses address", "{name}", "  ", "alice@gmail.com", "", `"alice at gmail.com" <sales@example.com>`},
		{"address placeholder", "{name} <{address}>", "Alice", "alice@gmail.com", "", `"Alice <alice at gmail.com>" <sales@example.com>`},
		{"no placeholders", "Example Notifications", "Alice", "alice@gmail.com", "", `"Example Notifications" <sales@example.com>`},
		{"unknown placeholder kept", "{name} {nope} {", "A", "a@b.example", "", `"A {nope} {" <sales@example.com>`},
		{"single pass", "{name} / {unit}", "{unit}", "a@b.example", "S", `"{unit} / S" <sales@example.com>`},
		{"every at sign", "{name}", "a@b@c ＠d﹫e", "x@y.example", "", `"a at b at c at d at e" <sales@example.com>`},
		{"controls removed", "{name}", "Ali\r\nce\x00\x1b\x7f\u0085\u202e \t Smith", "a@b.example", "", `"Alice Smith" <sales@example.com>`},
		{"quotes and backslash", "{name}", `Pat "PJ" O\Brien`, "a@b.example", "", `"Pat \"PJ\" O\\Brien" <sales@example.com>`},
		{"non-ASCII", "{name} via {unit}", "Jörg", "j@gmx.de", "Sales", `=?utf-8?q?J=C3=B6rg_via_Sales?= <sales@example.com>`},
		{"non-ASCII with specials", "{name}, {unit}", "José", "j@x.es", "Ventas", `=?utf-8?b?Sm9zw6ksIFZlbnRhcw==?= <sales@example.com>`},
		{"non-ASCII with backslash", "{name}", `Jörg\`, "j@x.de", "", `=?utf-8?b?SsO2cmdc?= <sales@example.com>`},
		{"invalid UTF-8", "{name}", "Jos\xe9", "j@x.es", "", `=?utf-8?q?Jos=EF=BF=BD?= <sales@example.com>`},
		{"empty result", "{unit}", "Alice", "a@b.example", "", `<sales@example.com>`},
		{"only controls", "\r\n\t", "Alice", "a@b.example", "", `<sales@example.com>`},
		{"encoded-word literal", "{name}", "=?utf-8?q?x?=", "a@b.example", "", `=?utf-8?q?=3D=3Futf-8=3Fq=3Fx=3F=3D?= <sales@example.com>`},
		// No From and the null envelope sender: nobody to name, so no "via Example" either.
		{"no name and no address", "{name} via Example", "", "", "", `<sales@example.com>`},
		{"no name and no address, unit", "{name} via {unit}", "", "", "Sales", `<sales@example.com>`},
		{"blank name and no address", "{name} {address}", " \t", "", "Sales", `<sales@example.com>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := rewrittenFrom(t, tc.template, tc.dname, tc.addr, tc.unit, to)
			require.Equal(t, tc.want, got)
			a, err := mail.ParseAddress(got)
			require.NoError(t, err)
			require.Equal(t, to, a.Address)
			require.NotContains(t, a.Name, "@")
		})
	}
}

// TestAppendApply checks that AppendApply writes after what dst holds exactly what Apply
// returns, without touching the prefix, and that it allocates for the output once: never
// when dst has room, once when it has none.
func TestAppendApply(t *testing.T) {
	msgs, err := filepath.Glob("testdata/*.msg")
	require.NoError(t, err)
	require.NotEmpty(t, msgs)
	prefix := []byte("DKIM-Signature: room for the signature\r\n")
	for _, path := range msgs {
		t.Run(filepath.Base(path), func(t *testing.T) {
			data, err := os.ReadFile(path)
			require.NoError(t, err)
			m, err := Parse(data)
			require.NoError(t, err)
			original, err := m.From()
			require.NoError(t, err)
			o := defaultOpts()
			o.Rewrite = true
			opts := o.options(original)
			want := Apply(m, opts)

			// No spare capacity: dst grows, the prefix is kept.
			dst := slices.Clip(slices.Clone(prefix))
			got := AppendApply(dst, m, opts)
			require.Equal(t, string(prefix)+string(want), string(got))

			// Headroom in front, exactly room enough behind: the message lands in dst's array.
			room := make([]byte, len(prefix), len(prefix)+len(want))
			copy(room, prefix)
			got = AppendApply(room, m, opts)
			require.Equal(t, string(prefix)+string(want), string(got))
			require.Same(t, &room[0], &got[0], "dst had room: no new array")

			// Empty and nil dst are Apply.
			require.Equal(t, string(want), string(AppendApply(nil, m, opts)))
			require.Equal(t, string(want), string(AppendApply([]byte{}, m, opts)))

			// Growing costs exactly one allocation more than appending into room.
			inRoom := testing.AllocsPerRun(20, func() { AppendApply(room[:len(prefix)], m, opts) })
			grown := testing.AllocsPerRun(20, func() { AppendApply(dst, m, opts) })
			require.Equal(t, inRoom+1, grown, "dst without room must grow once")
		})
	}
}

func TestApplyFolding(t *testing.T) {
	long := strings.Repeat("Konstantinopoulou ", 20)
	for _, name := range []string{long, strings.Repeat("é", 300), strings.Repeat("x", 3000), strings.Repeat("Jörg Ünicode ", 40)} {
		m, err := Parse([]byte("From: a@gmail.com\r\n\r\n"))
		require.NoError(t, err)
		o := Options{Rewrite: true, NewFrom: "sales@example.com", Original: &mail.Address{Name: name, Address: "a@gmail.com"},
			DisplayName: "{name} via {unit}", Unit: "Sales", ReplyToOriginal: true, Hostname: "relay.example.net", MessageID: "x"}
		out := Apply(m, o)
		require.NoError(t, verify(m, o, out))
		for _, l := range strings.Split(string(out), "\r\n") {
			// At most "Reply-To: " and one 75-character encoded-word.
			require.LessOrEqual(t, len(l), len("Reply-To: ")+75, "line %q", l)
		}
		m2, err := Parse(out)
		require.NoError(t, err)
		a, err := m2.From()
		require.NoError(t, err)
		require.Equal(t, strings.Join(strings.Fields(name), " ")+" via Sales", a.Name)
		v, _ := m2.Get("Reply-To")
		r, err := mail.ParseAddress(v)
		require.NoError(t, err)
		require.Equal(t, name, r.Name)
	}
}

func TestApplyOptionsSanitised(t *testing.T) {
	m, err := Parse([]byte("From: a@example.com\r\n\r\n"))
	require.NoError(t, err)
	o := Options{
		Hostname: "relay.example.net\r\nBcc: x", MessageID: "id <\r\n>",
		Received: Received{Helo: "evil\r\nX-Injected: 1", ClientIP: "::ffff:192.0.2.1", Proto: "ESMTP\n", ID: "q1;(x)", For: "<b@example.org>\r\nX: y"},
		Now:      time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC),
	}
	got := string(Apply(m, o))
	require.Equal(t, "Received: from evilX-Injected:1 ([192.0.2.1])\r\n"+
		"\tby relay.example.netBcc:x with ESMTP id q1x\r\n"+
		"\tfor <b@example.orgX: y>; Mon, 02 Mar 2026 10:00:00 +0000\r\n"+
		"From: a@example.com\r\n"+
		"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"+
		"Message-ID: <id@relay.example.netBcc:x>\r\n\r\n", got)
	require.NoError(t, verify(m, o, []byte(got)))

	// Without a MessageID the Received id names the message; without either, none is made up.
	o = Options{Hostname: "h.example", Received: Received{ID: "Q1"}}
	require.Contains(t, string(Apply(m, o)), "Message-ID: <Q1@h.example>\r\n")
	o.Received.ID = ""
	require.NotContains(t, string(Apply(m, o)), "Message-ID")
}
