// Package httpd owns the relay's HTTP side (SPEC §10): the listener on [http] listen, the
// probes /healthz and /readyz, /metrics (a handler it is given), the JSON API
// /api/preview and /api/dns, and the read-only admin page at /, with optional basic auth
// and the security headers of every response. It never changes anything: a preview runs
// the server's pipeline as a dry run (nothing spooled, nothing sent), and it never
// decides a sender or reads DNS itself (the pipeline and the DNS doctor do).
package httpd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"relay/internal/config"
	"relay/internal/pipeline"
	"relay/internal/spool"
)

// Bounds of the HTTP server: every request is small (GET with a query), and the slowest
// answer is a DNS check, bounded by dnsTimeout.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = dnsTimeout + 10*time.Second
	idleTimeout       = time.Minute
	maxHeaderBytes    = 32 << 10
)

// Defaults for zero Options fields.
const (
	DefaultReadyTTL        = 5 * time.Second
	DefaultUpstreamTimeout = 2 * time.Second
)

// DNSFunc runs the DNS doctor for one domain, checked as unit ("" for none) sends it, with
// cfg, and writes its JSON (`relay dns -json`) to w. The caller bounds ctx. It is a
// function rather than the doctor itself because the doctor builds on internal/server,
// which starts this package.
type DNSFunc func(ctx context.Context, cfg *config.Config, domain, unit string, w io.Writer) error

// Spool is what the HTTP side reads of the spool: whether a message could be stored now,
// and its depth.
type Spool interface {
	Writable() error
	Stats() spool.Stats
}

// Options are what the server hands the HTTP side. Config and Pipeline are required.
type Options struct {
	Config   *config.Config
	Pipeline *pipeline.Pipeline // the server's: previews run its current State, as a dry run
	Mode     string             // "spool", "direct" or "dry-run", for the page and /readyz
	Spool    Spool              // nil: no spool (direct mode, dry run)
	Metrics  http.Handler       // served at /metrics; nil: 404
	Recent   *Recent            // recent delivery outcomes for the page; nil: none shown
	DNS      DNSFunc            // nil: /api/dns answers 404
	Log      *slog.Logger

	// ReadyTTL is how long a /readyz result is reused (0: DefaultReadyTTL), so probes
	// from many load balancers cost one check, and the smarthost one dial, per period.
	ReadyTTL time.Duration
	// UpstreamTimeout bounds the dial of the upstream by /readyz (0: DefaultUpstreamTimeout).
	UpstreamTimeout time.Duration
}

// Server is the HTTP side of one relay.
type Server struct {
	o    Options
	log  *slog.Logger
	cfg  atomic.Pointer[config.Config]
	auth *basicAuth
	srv  *http.Server
	ln   net.Listener

	ready struct {
		group singleflight.Group
		last  atomic.Pointer[readyResult]
	}
	dnsSlots chan struct{} // bounds the DNS checks running at once
}

// New returns the HTTP side for o; Listen starts it.
func New(o Options) *Server {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.ReadyTTL <= 0 {
		o.ReadyTTL = DefaultReadyTTL
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = DefaultUpstreamTimeout
	}
	s := &Server{o: o, log: o.Log, auth: newBasicAuth(), dnsSlots: make(chan struct{}, dnsParallel)}
	s.cfg.Store(o.Config)
	s.srv = &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(o.Log.Handler(), slog.LevelWarn),
	}
	return s
}

// SetConfig makes cfg the configuration the handlers see (a reload): basic auth, the
// page, readiness. Previews follow the pipeline's own State.
func (s *Server) SetConfig(cfg *config.Config) {
	s.cfg.Store(cfg)
	s.ready.last.Store(nil) // the next probe checks the new settings
}

// Listen binds addr and serves on it in the background; a failure of the listener later
// is sent to errs.
func (s *Server) Listen(addr string, errs chan<- error) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	s.ln = ln
	go func() {
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errs <- err
		}
	}()
	return nil
}

// Addr is the address the listener is bound to, "" before Listen.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// Shutdown stops listening and waits for the requests in progress until ctx ends, then
// closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}

// Handler is every route behind the security headers; basic auth (when configured) guards
// all but the probes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/readyz", s.readyz)
	guarded := http.NewServeMux()
	guarded.HandleFunc("/{$}", s.page)
	guarded.Handle("/static/", http.FileServerFS(staticFS))
	guarded.HandleFunc("/api/preview", s.apiPreview)
	guarded.HandleFunc("/api/dns", s.apiDNS)
	if s.o.Metrics != nil {
		guarded.Handle("/metrics", s.o.Metrics)
	}
	mux.Handle("/", s.requireAuth(guarded))
	return headers(getOnly(mux))
}

// headers sets what every response carries: no script, style or frame from elsewhere, no
// framing of the page (clickjacking), no content sniffing, no referrer to other sites.
func headers(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		h.ServeHTTP(w, r)
	})
}

// getOnly refuses every method but GET and HEAD: the HTTP side is read-only.
func getOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			if isAPI(r) {
				writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed: use GET")
				return
			}
			http.Error(w, "method not allowed: use GET", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	plain(w, http.StatusOK, "ok\n")
}

func plain(w http.ResponseWriter, code int, text string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	io.WriteString(w, text)
}
