package main

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"relay/internal/spool"
)

func cmdQueue(e env) int {
	fs := e.flags("queue")
	cfgPath := configFlag(fs)
	if code, ok := e.parse(fs); !ok {
		return code
	}
	args := fs.Args()
	if len(args) == 0 {
		fs.Usage()
		return 2
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	dir := cfg.Queue.Dir
	fail := func(err error) int {
		fmt.Fprintf(e.stderr, "relay queue %s: %v\n", args[0], err)
		return 1
	}
	needID := func() (string, bool) {
		if len(args) != 2 {
			fmt.Fprintf(e.stderr, "relay queue %s: needs one message ID\n", args[0])
			return "", false
		}
		return args[1], true
	}
	switch args[0] {
	case "list":
		entries, err := spool.List(dir)
		if err != nil {
			return fail(err)
		}
		if len(entries) == 0 {
			fmt.Fprintln(e.stdout, "queue is empty")
			return 0
		}
		now := time.Now()
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tAGE\tSENDER\tRECIPIENTS\tATTEMPTS\tNEXT TRY\tLAST ERROR")
		for _, en := range entries {
			from := en.From
			if from == "" {
				from = "<>"
			}
			next := "now"
			if en.RetryRequested {
				next = "now (requested)"
			} else if en.NextTry.After(now) {
				next = "in " + en.NextTry.Sub(now).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\n", en.ID, now.Sub(en.Received).Round(time.Second),
				from, strings.Join(en.To, ","), en.Attempts, next, en.LastError)
		}
		tw.Flush()
		return 0
	case "show":
		id, ok := needID()
		if !ok {
			return 2
		}
		en, msg, err := spool.Show(dir, id)
		if err != nil {
			return fail(err)
		}
		from := en.From
		if from == "" {
			from = "<>"
		}
		done := strings.Join(en.Done, ", ")
		if done == "" {
			done = "-"
		}
		fmt.Fprintf(e.stdout, "id:         %s\nreceived:   %s\nsize:       %d\nsender:     %s\npending:    %s\ndone:       %s\nattempts:   %d\nnext try:   %s\nlast error: %s\n\n",
			en.ID, en.Received.Format(time.RFC3339), en.Size, from, strings.Join(en.To, ", "), done, en.Attempts,
			en.NextTry.Format(time.RFC3339), en.LastError)
		e.stdout.Write(msg)
		return 0
	case "retry":
		id := ""
		if len(args) == 2 {
			id = args[1]
		} else if len(args) > 2 {
			fmt.Fprintln(e.stderr, "relay queue retry: at most one message ID")
			return 2
		}
		if err := spool.Retry(dir, id); err != nil {
			return fail(err)
		}
		if id == "" {
			fmt.Fprintln(e.stdout, "all messages scheduled for delivery now")
		} else {
			fmt.Fprintf(e.stdout, "%s scheduled for delivery now\n", id)
		}
		return 0
	case "delete":
		id, ok := needID()
		if !ok {
			return 2
		}
		if err := spool.Delete(dir, id); err != nil {
			return fail(err)
		}
		fmt.Fprintf(e.stdout, "%s deleted\n", id)
		return 0
	default:
		fmt.Fprintf(e.stderr, "relay queue: unknown action %q (want list, show, retry or delete)\n", args[0])
		return 2
	}
}
