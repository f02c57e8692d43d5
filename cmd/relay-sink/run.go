package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

// run listens, prints "listening on ADDR", then "count=N bytes=B last_ns=T" every second
// while the count changes (not with -quiet) and once more on SIGTERM or SIGINT, and exits.
// T is the Unix time in nanoseconds at which the last message had been read in full: the
// load script's "last message at the sink".
func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("relay-sink", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:2526", "listen address; port 0 picks a free one (see the first line)")
	dir := fs.String("dir", "", "write each message into a new file DIR/*.eml (default: discard it)")
	quiet := fs.Bool("quiet", false, "print the count only when stopped, not every second")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return 2
	}
	// Registered before "listening" is printed, so a SIGTERM sent after that line is
	// always a clean stop with a final count.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(stderr, "relay-sink: %v\n", err)
		return 1
	}
	k := &sink{dir: *dir}
	srv := smtp.NewServer(k)
	srv.Domain = "relay-sink"
	srv.ErrorLog = log.New(stderr, "relay-sink: ", 0)
	fmt.Fprintf(stdout, "listening on %s\n", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	printed := int64(-1)
	for {
		select {
		case <-tick.C:
			if n := k.count.Load(); !*quiet && n != printed {
				k.print(stdout)
				printed = n
			}
		case <-ctx.Done():
			srv.Close()
			k.print(stdout)
			return 0
		case err := <-served:
			fmt.Fprintf(stderr, "relay-sink: %v\n", err)
			return 1
		}
	}
}

// sink is the go-smtp backend: every session accepts every sender, recipient and message.
type sink struct {
	dir   string
	count atomic.Int64
	bytes atomic.Int64
	mu    sync.Mutex
	last  time.Time // guarded by mu: sessions finish out of order, and last must be the latest
}

func (k *sink) print(w io.Writer) {
	k.mu.Lock()
	last := k.last
	k.mu.Unlock()
	var ns int64
	if !last.IsZero() {
		ns = last.UnixNano()
	}
	fmt.Fprintf(w, "count=%d bytes=%d last_ns=%d\n", k.count.Load(), k.bytes.Load(), ns)
}

func (k *sink) NewSession(*smtp.Conn) (smtp.Session, error) { return session{k}, nil }

type session struct{ k *sink }

func (session) Mail(string, *smtp.MailOptions) error { return nil }
func (session) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (session) Reset()                               {}
func (session) Logout() error                        { return nil }

func (s session) Data(r io.Reader) error {
	var w io.Writer = io.Discard
	var f *os.File
	if s.k.dir != "" {
		var err error
		f, err = os.CreateTemp(s.k.dir, "*.eml")
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	n, err := io.Copy(w, r)
	if err == nil && f != nil {
		err = f.Close()
	}
	if err != nil {
		return err
	}
	s.k.bytes.Add(n)
	s.k.mu.Lock()
	s.k.count.Add(1)
	s.k.last = time.Now()
	s.k.mu.Unlock()
	return nil
}
