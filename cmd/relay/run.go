package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
)

// env is what a subcommand may touch: its arguments and the process's streams.
type env struct {
	args   []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

type command struct {
	usage string
	help  string
	run   func(e env) int
}

// commands is the table of subcommands; each lives in its own file. (A function, not a
// variable: the subcommands read it for their usage lines.)
func commands() map[string]command {
	return map[string]command{
		"serve":         {"serve [-config F] [-dry-run]", "run the SMTP server", cmdServe},
		"send":          {"send [-config F] [-dry-run] [-unit U] [-from ADDR] [-to ADDR]... [-message FILE|-] [-json]", "one message through the pipeline, like sendmail", cmdSend},
		"check":         {"check [-config F]", "validate the configuration and print a summary", cmdCheck},
		"dns":           {"dns [-config F] [-json] [-unit U] [DOMAIN...]", "the DNS doctor: what each domain must publish for the relay to send as it", cmdDNS},
		"keygen":        {"keygen [-type rsa|ed25519] [-bits 2048] -out FILE [-selector S] [-domain D]", "write a new DKIM key and print its TXT record (and the CNAME customers publish)", cmdKeygen},
		"hash-password": {"hash-password", "read a password on stdin, print its bcrypt hash", cmdHashPassword},
		"queue":         {"queue [-config F] list|show ID|retry [ID]|delete ID", "inspect and act on the spool", cmdQueue},
		"version":       {"version", "print the version, commit and Go version of this build", cmdVersion},
	}
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "relay: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	return c.run(env{args: args[1:], stdin: stdin, stdout: stdout, stderr: stderr})
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: relay COMMAND [flags]")
	fmt.Fprintln(w)
	cmds := commands()
	names := make([]string, 0, len(cmds))
	for n := range cmds {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  relay %s\n      %s\n", cmds[n].usage, cmds[n].help)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "-config defaults to $RELAY_CONFIG, else relay.toml.")
}

// flags makes a FlagSet for a subcommand that prints errors and usage to e.stderr.
func (e env) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("relay "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: relay %s\n", commands()[name].usage)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; the returned code is meaningful when ok is false.
func (e env) parse(fs *flag.FlagSet) (code int, ok bool) {
	if err := fs.Parse(e.args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0, false
		}
		return 2, false
	}
	return 0, true
}

func configFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("RELAY_CONFIG")
	if def == "" {
		def = "relay.toml"
	}
	return fs.String("config", def, "configuration file")
}
