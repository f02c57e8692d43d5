package httpd

import (
	"bytes"
	"embed"
	"encoding/json"
	"html/template"
	"io/fs"
	"net/http"
	"strings"
	"time"

	"relay/internal/config"
	"relay/internal/preview"
)

// The page, its style sheet and its script are embedded: the binary serves everything
// itself, and the Content-Security-Policy allows nothing from elsewhere.
var (
	//go:embed templates/admin.html
	templateFS embed.FS
	//go:embed static
	staticFiles embed.FS

	pageTmpl = template.Must(template.New("admin.html").Funcs(template.FuncMap{
		"join": strings.Join,
		"ago":  ago,
	}).ParseFS(templateFS, "templates/admin.html"))
)

// staticFS serves /static/NAME; the directory itself is not listed.
var staticFS fs.FS = noDirs{staticFiles}

type noDirs struct{ fs.FS }

func (n noDirs) Open(name string) (fs.File, error) {
	f, err := n.FS.Open(name)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || st.IsDir() {
		f.Close()
		return nil, fs.ErrNotExist
	}
	return f, nil
}

// pageData is what the admin page shows.
type pageData struct {
	Hostname    string
	Mode        string
	Fallback    string
	DisplayName string
	Domains     []string // [sender] allowed_domains
	Units       []unitView
	Targets     []config.NamedDomain

	// The preview form: its values, and the result or the error of a submitted one.
	From, Unit string
	Submitted  bool
	Result     *preview.Decision
	Error      string

	// A DNS check asked for with ?dns=DOMAIN.
	DNSAvailable bool
	DNSDomain    string
	DNS          *dnsReport
	DNSError     string

	Spool  *spoolView
	Recent []recentView
	HasLog bool // delivery outcomes are recorded (spool mode)
}

type unitView struct {
	Name, Fallback, DisplayName, BounceAddress string
	Domains                                    []string
}

type spoolView struct {
	Depth  int
	Oldest string // age of the oldest message, "" when empty
}

type recentView struct {
	Time                         string
	ID, From                     string
	Attempt                      int
	Delivered, Deferred, Bounced string
	Reply                        string
}

// dnsReport is the part of the doctor's JSON the page shows; /api/dns has all of it.
type dnsReport struct {
	Domains []struct {
		Domain   string `json:"domain"`
		Unit     string `json:"unit"`
		Status   string `json:"status"`
		Verdict  string `json:"verdict"`
		Findings []struct {
			Severity string `json:"severity"`
			Area     string `json:"area"`
			Text     string `json:"text"`
		} `json:"findings"`
		Publish []struct {
			Kind string `json:"kind"`
			Why  string `json:"why"`
			Zone string `json:"zone"`
		} `json:"publish"`
	} `json:"domains"`
	DNSErrors []struct {
		Name  string `json:"name"`
		Type  string `json:"type"`
		Error string `json:"error"`
	} `json:"dns_errors"`
}

// page is the read-only admin page. GET /?from=ADDR&unit=U renders the preview's result
// in the page (the form works without JavaScript; the script fetches /api/preview and
// updates the same elements in place). GET /?dns=DOMAIN renders one domain's DNS check:
// never all of them on every load, since each costs dozens of queries.
func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	cfg := s.cfg.Load()
	q := r.URL.Query()
	d := pageData{
		Hostname: cfg.Hostname, Mode: s.o.Mode, Fallback: cfg.Sender.Fallback,
		DisplayName: cfg.Sender.DisplayName, Domains: cfg.Sender.AllowedDomains,
		Targets: cfg.NamedDomains(), DNSAvailable: s.o.DNS != nil,
		From: q.Get("from"), Unit: q.Get("unit"),
	}
	for _, u := range cfg.Units {
		d.Units = append(d.Units, unitView{Name: u.Name, Fallback: u.Fallback, DisplayName: u.DisplayName,
			BounceAddress: u.BounceAddress, Domains: u.AllowedDomains})
	}
	code := http.StatusOK
	if q.Has("from") {
		d.Submitted = true
		res, err := s.preview(r.Context(), d.From, d.Unit, clientIP(r))
		if err != nil {
			code, d.Error = s.errorStatus(err)
		} else {
			d.Result = &res
		}
	}
	if q.Has("dns") {
		d.DNSDomain = q.Get("dns")
		out, err := s.dns(r.Context(), d.DNSDomain, q.Get("dns_unit"))
		if err == nil {
			var rep dnsReport
			if err = json.Unmarshal(out, &rep); err == nil {
				d.DNS = &rep
			}
		}
		if err != nil {
			code, d.DNSError = s.dnsErrorStatus(err)
		}
	}
	if s.o.Spool != nil {
		st := s.o.Spool.Stats()
		d.Spool = &spoolView{Depth: st.Depth}
		if !st.Oldest.IsZero() {
			d.Spool.Oldest = ago(st.Oldest)
		}
	}
	d.HasLog = s.o.Recent != nil
	for _, o := range s.o.Recent.List() {
		d.Recent = append(d.Recent, recentView{
			Time: o.Time.UTC().Format(time.DateTime), ID: o.ID, From: orNull(o.From), Attempt: o.Attempt,
			Delivered: strings.Join(o.Delivered, ", "), Deferred: strings.Join(o.Deferred, ", "),
			Bounced: strings.Join(o.Bounced, ", "), Reply: o.Reply,
		})
	}
	var buf bytes.Buffer
	if err := pageTmpl.Execute(&buf, d); err != nil {
		s.log.Error("http: admin page", "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func ago(t time.Time) string {
	return time.Since(t).Round(time.Second).String()
}

func orNull(s string) string {
	if s == "" {
		return "<>"
	}
	return s
}
