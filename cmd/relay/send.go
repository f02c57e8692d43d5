package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"relay/internal/deliver"
	"relay/internal/pipeline"
	"relay/internal/preview"
	"relay/internal/rewrite"
	"relay/internal/server"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func cmdSend(e env) int {
	fs := e.flags("send")
	cfgPath := configFlag(fs)
	dry := fs.Bool("dry-run", false, "print the decision (and with -message the outgoing message); send nothing")
	unit := fs.String("unit", "", "business unit")
	from := fs.String("from", "", "sender address (envelope; and the From of the generated message without -message)")
	var to multiFlag
	fs.Var(&to, "to", "recipient address (repeatable)")
	msgFile := fs.String("message", "", "message file, or - for standard input")
	asJSON := fs.Bool("json", false, "print the decision as JSON")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(e.stderr, "relay send: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	for _, a := range append([]string{*from}, to...) {
		if a == "" {
			continue
		}
		if err := preview.CheckAddress(a); err != nil {
			fmt.Fprintf(e.stderr, "relay send: %v\n", err)
			return 2
		}
	}
	if !*dry && len(to) == 0 {
		fmt.Fprintln(e.stderr, "relay send: at least one -to is needed (or use -dry-run)")
		return 2
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	st, err := server.NewState(cfg)
	if err != nil {
		fmt.Fprintf(e.stderr, "relay send: %v\n", err)
		return 1
	}

	var data []byte
	switch *msgFile {
	case "":
		if *from == "" {
			fmt.Fprintln(e.stderr, "relay send: give -from ADDR or -message FILE")
			return 2
		}
		data = preview.SampleMessage(*from, to, time.Now())
	case "-":
		data, err = io.ReadAll(e.stdin)
	default:
		data, err = os.ReadFile(*msgFile)
	}
	if err != nil {
		fmt.Fprintf(e.stderr, "relay send: read message: %v\n", err)
		return 1
	}
	data = pipeline.CRLF(data)

	envelope := *from
	if envelope == "" {
		if m, err := rewrite.Parse(data); err == nil {
			if a, err := m.From(); err == nil && a != nil {
				envelope = a.Address
			}
		}
	}

	var sub pipeline.Submitter
	var sender deliver.Sender
	if !*dry {
		// send delivers synchronously to the upstream, as direct mode does: the command's
		// exit status then tells whether the upstream took the message.
		sender, err = deliver.New(cfg, nil)
		if err != nil {
			fmt.Fprintf(e.stderr, "relay send: upstream: %v\n", err)
			return 1
		}
		defer sender.Close()
		sub = &deliver.Direct{Sender: sender}
	}
	p := pipeline.New(st, sub, nil)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Upstream.Timeout.Duration+cfg.SPF.Timeout.Duration+5*time.Second)
	defer cancel()
	res, err := p.Process(ctx, pipeline.Input{
		Envelope: envelope,
		To:       to,
		Data:     data,
		Unit:     *unit,
		Received: rewrite.Received{Helo: "localhost", ClientIP: "127.0.0.1", Proto: "LOCAL"},
		Client:   "local",
	})
	if err != nil {
		fmt.Fprintf(e.stderr, "relay send: %v\n", err)
		return 1
	}

	decisionOut := e.stdout
	if *msgFile != "" && *dry {
		decisionOut = e.stderr
		e.stdout.Write(res.Message)
	}
	if *dry || *asJSON {
		printDecision(decisionOut, res, *asJSON)
	}
	if !*dry && !*asJSON {
		fmt.Fprintf(e.stdout, "sent %s as %s (%s)\n", res.ID, res.Decision.From, res.Decision.Reason)
	}
	return 0
}

func printDecision(w io.Writer, res pipeline.Result, asJSON bool) {
	if asJSON {
		preview.WriteJSON(w, preview.Of(res))
		return
	}
	d := res.Decision
	var sels []string
	for _, k := range res.DKIM {
		sels = append(sels, k.Selector)
	}
	show := func(s string) string {
		if s == "" {
			return "(none)"
		}
		return s
	}
	envelope := d.Envelope
	if envelope == "" {
		envelope = "<>"
	}
	fmt.Fprintf(w, "from:      %s\n", show(d.FromOriginal))
	fmt.Fprintf(w, "effective: %s\n", res.FromHeader())
	fmt.Fprintf(w, "envelope:  %s\n", envelope)
	fmt.Fprintf(w, "reply-to:  %s\n", show(res.ReplyTo()))
	fmt.Fprintf(w, "reason:    %s (%s)\n", d.Reason, d.Detail)
	if d.Unit != "" {
		fmt.Fprintf(w, "unit:      %s\n", d.Unit)
	}
	fmt.Fprintf(w, "dkim:      d=%s s=%s\n", d.DKIMDomain, strings.Join(sels, ","))
}
