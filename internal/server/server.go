// Package server owns a running relay: it wires the stages for one configuration (front
// end, pipeline, spool and delivery, or direct delivery, or a dry run), starts the
// listeners, applies reloads and shuts down. It is the one place that knows how the stages
// fit together; cmd/relay only parses flags, loads the file and handles signals, and the
// HTTP side and the DNS doctor use what it builds.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"time"

	"relay/internal/authz"
	"relay/internal/config"
	"relay/internal/deliver"
	"relay/internal/dsn"
	"relay/internal/httpd"
	"relay/internal/metrics"
	"relay/internal/pipeline"
	"relay/internal/queue"
	"relay/internal/resolver"
	"relay/internal/rewrite"
	"relay/internal/signer"
	"relay/internal/smtpd"
	"relay/internal/spool"
)

// Options are the choices of the process rather than of the configuration file.
type Options struct {
	// DryRun makes every message stop after signing: nothing is spooled or sent (relay
	// serve -dry-run).
	DryRun bool
	Log    *slog.Logger
	// Metrics is where the server counts (SPEC §10 /metrics); nil: the server makes its own.
	Metrics *metrics.Metrics
	// HTTP is what the HTTP side needs beyond what the server builds (the DNS doctor,
	// test timings); the server fills in its config, pipeline, spool, metrics and log.
	HTTP httpd.Options
}

// Server is a running relay: listeners, front end, pipeline and delivery.
type Server struct {
	log      *slog.Logger
	metrics  *metrics.Metrics
	mode     string
	p        *pipeline.Pipeline
	smtp     *smtpd.Server
	spool    *spool.Spool
	queue    *queue.Queue
	sender   deliver.Sender
	lns      []net.Listener
	http     *httpd.Server // nil: [http] listen is off
	serveErr chan error
	stopRun  context.CancelFunc
	bg       sync.WaitGroup
}

// New wires the stages for cfg and starts listening on its addresses.
func New(cfg *config.Config, o Options) (*Server, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w)
	}
	m := o.Metrics
	if m == nil {
		m = metrics.New()
	}
	st, err := newState(cfg, m)
	if err != nil {
		return nil, err
	}
	s := &Server{log: log, metrics: m, mode: cfg.Queue.Mode, serveErr: make(chan error, 3)}
	runCtx, stopRun := context.WithCancel(context.Background())
	s.stopRun = stopRun
	s.p = pipeline.New(st, nil, log)
	s.p.Metrics = m
	if o.DryRun {
		s.mode = "dry-run"
	} else {
		s.sender, err = deliver.New(cfg, log)
		if err != nil {
			stopRun()
			return nil, fmt.Errorf("upstream: %w", err)
		}
		switch cfg.Queue.Mode {
		case "direct":
			s.p.Submit = meteredDirect{&deliver.Direct{Sender: s.sender}, m}
		default:
			// pipeline → queue (stores through the spool, delivers through the sender) →
			// dsn.Sender for bounces → the same pipeline, from <>.
			sp, recovered, err := spool.Open(spool.Options{Dir: cfg.Queue.Dir, Log: log})
			if err != nil {
				s.sender.Close()
				stopRun()
				return nil, fmt.Errorf("spool: %w", err)
			}
			qo := queue.Options{
				MaxAge: cfg.Queue.MaxAge.Duration, RetryMin: cfg.Queue.RetryMin.Duration,
				RetryMax: cfg.Queue.RetryMax.Duration, Workers: cfg.Upstream.MaxConnections,
				Sender: s.sender, Bouncer: &dsn.Sender{Hostname: cfg.Hostname, Pipeline: s.p},
				Log: log, Metrics: m,
			}
			if cfg.HTTP.Listen != "" {
				// The admin page's recent deliveries (listeners change only at a restart).
				if o.HTTP.Recent == nil {
					o.HTTP.Recent = httpd.NewRecent(0)
				}
				qo.Observe = o.HTTP.Recent.Add
			}
			q, err := queue.New(sp, recovered, qo)
			if err != nil {
				sp.Close()
				s.sender.Close()
				stopRun()
				return nil, fmt.Errorf("queue: %w", err)
			}
			s.p.Submit = q
			s.spool, s.queue = sp, q
			m.WatchSpool(sp.Stats)
			s.bg.Add(1)
			go func() { defer s.bg.Done(); q.Run(runCtx) }()
		}
	}
	s.smtp, err = smtpd.New(cfg, handler{p: s.p, dry: o.DryRun, m: m}, log)
	if err != nil {
		s.Shutdown(time.Second)
		return nil, err
	}
	s.smtp.Metrics = m
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
	if cfg.SMTP.Listen != "" {
		if err := listen(cfg.SMTP.Listen, false); err != nil {
			s.Shutdown(time.Second)
			return nil, err
		}
	}
	if cfg.SMTP.ImplicitTLSListen != "" {
		if err := listen(cfg.SMTP.ImplicitTLSListen, true); err != nil {
			s.Shutdown(time.Second)
			return nil, err
		}
	}
	if cfg.HTTP.Listen != "" {
		ho := o.HTTP
		ho.Config, ho.Pipeline, ho.Mode, ho.Metrics, ho.Log = cfg, s.p, s.mode, m.Handler(), log
		if s.spool != nil {
			ho.Spool = s.spool
		}
		h := httpd.New(ho)
		if err := h.Listen(cfg.HTTP.Listen, s.serveErr); err != nil {
			s.Shutdown(time.Second)
			return nil, fmt.Errorf("listen %s: %w", cfg.HTTP.Listen, err)
		}
		s.http = h
	}
	return s, nil
}

// Addrs are the addresses the SMTP listeners are bound to, plain first.
func (s *Server) Addrs() []string {
	var a []string
	for _, ln := range s.lns {
		a = append(a, ln.Addr().String())
	}
	return a
}

// HTTPAddr is the address the HTTP listener is bound to, "" when [http] listen is off.
func (s *Server) HTTPAddr() string {
	if s.http == nil {
		return ""
	}
	return s.http.Addr()
}

// Mode is "spool", "direct" or "dry-run".
func (s *Server) Mode() string { return s.mode }

// Err reports a listener that failed for good.
func (s *Server) Err() <-chan error { return s.serveErr }

// Pipeline is the message path the server runs; previews call it with no Submitter.
func (s *Server) Pipeline() *pipeline.Pipeline { return s.p }

// Metrics is what the server counts; its Handler serves /metrics.
func (s *Server) Metrics() *metrics.Metrics { return s.metrics }

// Shutdown stops accepting, lets sessions finish, then stops the delivery workers, all
// within grace; what is still spooled stays on disk for the next start.
func (s *Server) Shutdown(grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		if s.http != nil {
			if err := s.http.Shutdown(ctx); err != nil {
				s.log.Warn("http requests cut at shutdown", "err", err)
			}
		}
	}()
	if s.smtp != nil {
		if err := s.smtp.Shutdown(ctx); err != nil {
			s.log.Warn("smtp sessions cut at shutdown", "err", err)
		}
	}
	for _, ln := range s.lns {
		ln.Close()
	}
	<-httpDone
	s.stopRun()
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("deliveries still running at the end of the grace period; they stay spooled")
	}
	if s.queue != nil {
		s.queue.Close() // cancels what still runs; the spool keeps it for the next start
	}
	if s.spool != nil {
		s.spool.Close()
	}
	if s.sender != nil {
		s.sender.Close()
	}
	s.log.Info("stopped")
}

// Reload applies a new configuration; one that cannot be applied is refused and the
// running configuration stays (SPEC §3). It returns the changed settings that only a
// restart applies. The steps that can fail come first, so a refused reload changes nothing.
func (s *Server) Reload(cfg *config.Config) (restart []string, err error) {
	sg, err := signer.New(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	old := s.p.State()
	if err := s.smtp.SetConfig(cfg); err != nil {
		return nil, err
	}
	// Last, because it changes the running authorizer in place.
	st, err := withAuth(cfg, sg, old, s.metrics)
	if err != nil {
		s.smtp.SetConfig(old.Config)
		return nil, err
	}
	s.p.Swap(st)
	if s.http != nil {
		s.http.SetConfig(cfg)
	}
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
	diff("http.listen", a.HTTP.Listen, b.HTTP.Listen)
	diff("[upstream]", a.Upstream, b.Upstream)
	diff("[queue]", a.Queue, b.Queue)
	diff("hostname", a.Hostname, b.Hostname)
	return keys
}

// NewState builds what the pipeline needs for cfg: the signer over its keys and the
// authorizer of live checks (`relay send` uses it without a server).
func NewState(cfg *config.Config) (*pipeline.State, error) { return newState(cfg, nil) }

// newState is NewState with the authorizer counting into m (nil: not counted).
func newState(cfg *config.Config, m *metrics.Metrics) (*pipeline.State, error) {
	sg, err := signer.New(cfg.DKIM)
	if err != nil {
		return nil, err
	}
	return withAuth(cfg, sg, nil, m)
}

// withAuth completes a State with the authorizer of SPF and delegation checks. prev, when
// not nil, is the running state: its authorizer, and so its DNS cache, is kept unless the
// settings it depends on changed. A new authorizer counts into m.
func withAuth(cfg *config.Config, sg *signer.Signer, prev *pipeline.State, m *metrics.Metrics) (*pipeline.State, error) {
	st := &pipeline.State{Config: cfg, Signer: sg}
	if !cfg.SPF.Enabled && !cfg.DKIM.DelegationCheck {
		return st, nil
	}
	if prev != nil {
		if a, ok := prev.Auth.(*authz.Authorizer); ok && a != nil {
			if err := a.Reload(cfg, sg.DefaultPublicKey()); err != nil {
				return nil, fmt.Errorf("dns resolver: %w", err)
			}
			st.Auth = a
			return st, nil
		}
	}
	r, err := resolver.New(cfg.DNS.Servers, cfg.DNS.Timeout.Duration)
	if err != nil {
		return nil, fmt.Errorf("dns resolver: %w", err)
	}
	a := authz.New(cfg, r, sg.DefaultPublicKey())
	a.Metrics = m
	st.Auth = a
	return st, nil
}

// handler adapts the front end's Inbound to the pipeline.
type handler struct {
	p   *pipeline.Pipeline
	dry bool
	m   *metrics.Metrics // counts what clients sent: DSNs and `relay send` do not come here
}

func (h handler) Handle(ctx context.Context, m *smtpd.Inbound) (string, error) {
	proto := "ESMTP"
	if m.TLS {
		proto += "S"
	}
	if m.User != "" {
		proto += "A"
	}
	// The pipeline makes the queue id (one place for every message: SMTP, relay send,
	// DSNs); the front end's log line gets it through the error.
	res, err := h.p.Process(ctx, pipeline.Input{
		Envelope: m.From, To: m.To, Data: m.Data,
		Unit: m.UserUnit, NetworkAllowed: m.NetworkAllowed,
		Received: rewrite.Received{Helo: m.Helo, ClientIP: m.ClientIP.String(), Proto: proto, Time: m.Received},
		Client:   m.ClientIP.String(), User: m.User,
	})
	if err != nil {
		return "", fmt.Errorf("message %s: %w", res.ID, err)
	}
	h.m.Received()
	if res.Decision.Rewritten {
		h.m.Rewritten(res.Decision.Reason)
	}
	if h.dry {
		return fmt.Sprintf("dry run: would send as <%s> (%s)", res.Decision.From, res.Decision.Reason), nil
	}
	return "Ok: queued as " + res.ID, nil
}
