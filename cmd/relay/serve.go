package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"reflect"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"

	"relay/internal/config"
	"relay/internal/deliver"
	"relay/internal/pipeline"
	"relay/internal/rewrite"
	"relay/internal/signer"
	"relay/internal/smtpd"
	"relay/internal/spool"
)

// shutdownGrace bounds how long SIGTERM waits for sessions and deliveries in flight.
const shutdownGrace = 20 * time.Second

func cmdServe(e env) int {
	fs := e.flags("serve")
	cfgPath := configFlag(fs)
	dry := fs.Bool("dry-run", false, "run every message through policy, rewrite and signing; spool and send nothing")
	if code, ok := e.parse(fs); !ok {
		return code
	}
	cfg, ok := load(*cfgPath, e.stderr)
	if !ok {
		return 1
	}
	log := newLogger(cfg, e.stderr)
	if path := os.Getenv("RELAY_CPUPROFILE"); path != "" {
		// For performance work: a CPU profile of the whole run, written at shutdown.
		stop, err := cpuProfile(path)
		if err != nil {
			fmt.Fprintf(e.stderr, "relay serve: RELAY_CPUPROFILE: %v\n", err)
			return 1
		}
		defer stop()
	}
	srv, err := start(cfg, *dry, log)
	if err != nil {
		fmt.Fprintf(e.stderr, "relay serve: %v\n", err)
		return 1
	}
	log.Info("relay started", "listen", srv.addrs(), "mode", srv.mode, "upstream", cfg.Upstream.Address, "config", *cfgPath)

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for {
		select {
		case err := <-srv.serveErr:
			log.Error("smtp listener failed", "err", err)
			srv.stop(shutdownGrace)
			return 1
		case s := <-sigs:
			if s == syscall.SIGHUP {
				restart, err := srv.reload(*cfgPath)
				switch {
				case err != nil:
					log.Error("reload refused; the running configuration stays", "config", *cfgPath, "err", err)
				case len(restart) > 0:
					log.Warn("configuration reloaded, but these changes take effect only after a restart", "config", *cfgPath, "settings", restart)
				default:
					log.Info("configuration reloaded", "config", *cfgPath)
				}
				continue
			}
			log.Info("shutting down", "signal", s.String(), "grace", shutdownGrace)
			srv.stop(shutdownGrace)
			return 0
		}
	}
}

// server is a running relay: listeners, front end, pipeline and delivery.
type server struct {
	log      *slog.Logger
	mode     string
	p        *pipeline.Pipeline
	smtp     *smtpd.Server
	spool    *spool.Spool
	sender   deliver.Sender
	lns      []net.Listener
	serveErr chan error
	stopRun  context.CancelFunc
	bg       sync.WaitGroup
}

// start wires the stages for cfg and starts listening. dry makes every message stop after
// signing: nothing is spooled or sent.
func start(cfg *config.Config, dry bool, log *slog.Logger) (*server, error) {
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w)
	}
	if cfg.HTTP.Listen != "" {
		log.Warn("config", "warning", "[http] listen is set, but this version has no HTTP listener yet: nothing listens on "+cfg.HTTP.Listen)
	}
	st, err := newState(cfg)
	if err != nil {
		return nil, err
	}
	s := &server{log: log, mode: cfg.Queue.Mode, serveErr: make(chan error, 2)}
	runCtx, stopRun := context.WithCancel(context.Background())
	s.stopRun = stopRun
	s.p = pipeline.New(st, nil, log)
	if dry {
		s.mode = "dry-run"
	} else {
		s.sender, err = deliver.New(cfg, log)
		if err != nil {
			stopRun()
			return nil, fmt.Errorf("upstream: %w", err)
		}
		switch cfg.Queue.Mode {
		case "direct":
			s.p.Submit = &deliver.Direct{Sender: s.sender}
		default:
			sp, err := spool.Open(spool.Options{
				Dir: cfg.Queue.Dir, MaxAge: cfg.Queue.MaxAge.Duration,
				RetryMin: cfg.Queue.RetryMin.Duration, RetryMax: cfg.Queue.RetryMax.Duration,
				Workers: cfg.Upstream.MaxConnections, Sender: s.sender, Log: log,
				Hostname: cfg.Hostname, Bounce: s.bounce,
			})
			if err != nil {
				s.sender.Close()
				stopRun()
				return nil, fmt.Errorf("spool: %w", err)
			}
			s.p.Submit = sp
			s.spool = sp
			s.bg.Add(1)
			go func() { defer s.bg.Done(); sp.Run(runCtx) }()
		}
	}
	s.smtp, err = smtpd.New(cfg, handler{p: s.p, dry: dry}, log)
	if err != nil {
		s.stop(time.Second)
		return nil, err
	}
	listen := func(addr string, implicitTLS bool) error {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		s.lns = append(s.lns, ln)
		go func() {
			var err error
			if implicitTLS {
				err = s.smtp.ServeTLS(ln)
			} else {
				err = s.smtp.Serve(ln)
			}
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, smtpd.ErrServerClosed) {
				s.serveErr <- err
			}
		}()
		return nil
	}
	if err := listen(cfg.SMTP.Listen, false); err != nil {
		s.stop(time.Second)
		return nil, err
	}
	if cfg.SMTP.ImplicitTLSListen != "" {
		if err := listen(cfg.SMTP.ImplicitTLSListen, true); err != nil {
			s.stop(time.Second)
			return nil, err
		}
	}
	return s, nil
}

func (s *server) addrs() []string {
	var a []string
	for _, ln := range s.lns {
		a = append(a, ln.Addr().String())
	}
	return a
}

// bounce sends a delivery status notification through the same pipeline as any message:
// rewritten, signed and spooled, from the null sender.
func (s *server) bounce(ctx context.Context, to string, dsn []byte) error {
	host := s.p.State().Config.Hostname
	_, err := s.p.Process(ctx, pipeline.Input{To: []string{to}, Data: dsn,
		Received: rewrite.Received{Helo: host, ClientIP: "127.0.0.1", Proto: "LOCAL"}, Client: "dsn"})
	return err
}

// stop stops accepting, lets sessions finish, then stops the delivery workers; what is
// still spooled stays on disk for the next start.
func (s *server) stop(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if s.smtp != nil {
		if err := s.smtp.Shutdown(ctx); err != nil {
			s.log.Warn("smtp sessions cut at shutdown", "err", err)
		}
	}
	for _, ln := range s.lns {
		ln.Close()
	}
	s.stopRun()
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("deliveries still running at the end of the grace period; they stay spooled")
	}
	if s.spool != nil {
		s.spool.Close() // cancels what still runs; the spool keeps it for the next start
	}
	if s.sender != nil {
		s.sender.Close()
	}
	s.log.Info("stopped")
}

// reload applies a new configuration file; an invalid one is refused and the running
// configuration stays (SPEC §3). It returns the changed settings that only a restart
// applies. The steps that can fail come first, so a refused reload changes nothing.
func (s *server) reload(path string) (restart []string, err error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, err
	}
	sg, err := signer.New(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	old := s.p.State()
	if err := s.smtp.SetConfig(cfg); err != nil {
		return nil, err
	}
	st, err := withAuth(cfg, sg, old)
	if err != nil {
		s.smtp.SetConfig(old.Config)
		return nil, err
	}
	s.p.Swap(st)
	return restartOnly(old.Config, cfg), nil
}

// restartOnly names the settings that differ between a and b but are read only at start:
// listeners, the upstream and the queue.
func restartOnly(a, b *config.Config) []string {
	var keys []string
	diff := func(key string, x, y any) {
		if !reflect.DeepEqual(x, y) {
			keys = append(keys, key)
		}
	}
	diff("smtp.listen", a.SMTP.Listen, b.SMTP.Listen)
	diff("smtp.implicit_tls_listen", a.SMTP.ImplicitTLSListen, b.SMTP.ImplicitTLSListen)
	diff("[upstream]", a.Upstream, b.Upstream)
	diff("[queue]", a.Queue, b.Queue)
	diff("hostname", a.Hostname, b.Hostname)
	return keys
}

// handler adapts the front end's Inbound to the pipeline.
type handler struct {
	p   *pipeline.Pipeline
	dry bool
}

func (h handler) Handle(ctx context.Context, m *smtpd.Inbound) (string, error) {
	proto := "ESMTP"
	if m.TLS {
		proto += "S"
	}
	if m.User != "" {
		proto += "A"
	}
	res, err := h.p.Process(ctx, pipeline.Input{
		ID: m.ID, Envelope: m.From, To: m.To, Data: m.Data,
		Unit:       m.UserUnit,
		UnitHeader: m.UserUnit == "" && m.NetworkAllowed && h.p.State().Config.SMTP.TrustUnitHeader,
		Received: rewrite.Received{Helo: m.Helo, ClientIP: m.ClientIP.String(), Proto: proto,
			ID: m.ID, Time: m.Received},
		Client: m.ClientIP.String(), User: m.User,
	})
	if err != nil {
		return "", err
	}
	if h.dry {
		return fmt.Sprintf("dry run: would send as <%s> (%s)", res.Decision.From, res.Decision.Reason), nil
	}
	return "Ok: queued as " + res.ID, nil
}

func cpuProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
