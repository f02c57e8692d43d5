package spf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"

	"relay/internal/resolver"
)

// The limits of RFC 7208 §4.6.4: past either, check_host is a permerror.
const (
	MaxLookups     = 10
	MaxVoidLookups = 2
)

// maxWalk bounds the records one Walk fetches: a record of ten includes of ten includes
// each would otherwise cost a hundred queries to say what its first level already says
// (more than 10 lookups).
const maxWalk = 40

// Node is one record of an SPF include tree, as the DNS doctor (SPEC §9) shows it: the
// record at Domain, the terms of it that cost a DNS lookup, and the records it includes.
type Node struct {
	// Term is the term that leads here ("include:spf.protection.outlook.com",
	// "redirect=_spf.example.net"); "" for the record Walk started from.
	Term   string `json:"term"`
	Domain string `json:"domain"`
	// Record is the SPF record of Domain, "" when none could be read.
	Record string `json:"record"`
	// Error says why this record cannot be evaluated (no SPF record, several, a syntax
	// error naming the term, an include loop, macros the walk does not expand, the
	// lookup failing); "" when it can.
	Error string `json:"error"`
	// Temporary is set when a lookup for this record failed temporarily (timeout,
	// SERVFAIL): what is below it is unknown.
	Temporary bool `json:"temporary"`
	// Lookups counts the terms that cost a DNS lookup (include, a, mx, ptr, exists,
	// redirect) in this record and every record below it; Voids the lookups among them
	// that found nothing (NXDOMAIN or no record), which RFC 7208 §4.6.4 limits to 2.
	Lookups int `json:"lookups"`
	Voids   int `json:"void_lookups"`
	// Notes are what the walk saw of single terms: "a:gone.example: no address (void
	// lookup)", "ptr: RFC 7208 §5.5 says not to use it".
	Notes    []string `json:"notes"`
	Includes []*Node  `json:"includes"`
}

// Walk counts, without an IP to check, what evaluating rec (the record of domain) costs
// when no mechanism matches, as for a receiver checking an IP the record does not list:
// every term before the first all that costs a lookup, in rec and in every record its
// include: and redirect= terms lead to (RFC 7208 §4.6.4). It looks up the names of a, mx
// and exists to count void lookups: an a name without an A record is void when v4 (what
// an IPv4 client's check sees), else only without A and AAAA; an mx name without MX
// records is void. Macros are not expanded (they depend on the message): such a term
// counts one lookup and is not followed.
//
// The error is the first temporary DNS failure met (a *net.DNSError), when there was
// one: the tree is then incomplete where Node.Temporary says so.
func Walk(ctx context.Context, q resolver.Querier, domain string, rec *Record, v4 bool) (*Node, error) {
	w := &walker{q: q, v4: v4}
	root := &Node{Domain: strings.TrimSuffix(domain, "."), Record: rec.String()}
	w.record(ctx, root, rec, []string{canonicalName(domain)})
	w.mu.Lock()
	defer w.mu.Unlock()
	return root, w.temp
}

type walker struct {
	q       resolver.Querier
	v4      bool
	fetched atomic.Int32

	mu   sync.Mutex
	temp error
}

func (w *walker) temporary(err error) {
	w.mu.Lock()
	if w.temp == nil {
		w.temp = err
	}
	w.mu.Unlock()
}

// record counts rec's own terms and walks the records it leads to, all at once; path
// is the chain of domains from the root, for loops.
func (w *walker) record(ctx context.Context, n *Node, rec *Record, path []string) {
	all := rec.AllIndex()
	var wg sync.WaitGroup
	notes := make([]string, len(rec.Terms))
	voids := make([]int, len(rec.Terms))
	for i, t := range rec.Terms {
		// As Record.Lookups: evaluation ends at all, and redirect= is then ignored.
		if all >= 0 && (i > all || t.IsModifier) || !t.CostsLookup() {
			continue
		}
		n.Lookups++
		target := t.Value
		if target == "" {
			target = n.Domain
		}
		target = strings.TrimSuffix(target, ".")
		if strings.IndexByte(target, '%') >= 0 {
			notes[i] = t.Raw + ": has macros, which depend on the message: not followed"
			if t.Name == "include" || t.Name == "redirect" {
				n.Includes = append(n.Includes, &Node{Term: t.Raw, Domain: target, Error: "macros are not expanded: not followed"})
			}
			continue
		}
		switch t.Name {
		case "include", "redirect":
			child := &Node{Term: t.Raw, Domain: target}
			n.Includes = append(n.Includes, child)
			switch {
			case containsName(path, canonicalName(target)):
				child.Error = "include loop: " + target + " is already being evaluated"
			case len(path) > MaxLookups || w.fetched.Add(1) > maxWalk:
				child.Error = "not followed: the tree is already far over the limit"
			default:
				wg.Go(func() { w.fetch(ctx, child, append(path[:len(path):len(path)], canonicalName(target))) })
			}
		case "ptr":
			notes[i] = t.Raw + ": RFC 7208 §5.5 says not to use ptr (slow, unreliable; some receivers ignore it)"
		case "a", "exists":
			wg.Go(func() {
				// exists always asks for A (§5.7).
				v6 := !w.v4 && t.Name == "a"
				ips, err := resolver.IP(ctx, w.q, target, true, v6)
				notes[i], voids[i] = w.void(t.Raw, len(ips), err, "no address")
			})
		case "mx":
			wg.Go(func() {
				mxs, err := resolver.MX(ctx, w.q, target)
				notes[i], voids[i] = w.void(t.Raw, len(mxs), err, "no MX record")
				if err == nil && len(mxs) > 10 {
					notes[i] = fmt.Sprintf("%s: %d MX records, more than the 10 RFC 7208 §4.6.4 allows: permerror", t.Raw, len(mxs))
				}
			})
		}
	}
	wg.Wait()
	for i := range rec.Terms {
		if notes[i] != "" {
			n.Notes = append(n.Notes, notes[i])
		}
		n.Voids += voids[i]
	}
	for _, c := range n.Includes {
		n.Lookups += c.Lookups
		n.Voids += c.Voids
	}
}

// void reads the answer of a lookup made for a term: a void lookup (1), a temporary
// failure, or nothing to say.
func (w *walker) void(term string, answers int, err error, none string) (string, int) {
	var d *net.DNSError
	switch {
	case err == nil && answers > 0:
		return "", 0
	case err == nil || errors.As(err, &d) && d.IsNotFound:
		return term + ": " + none + " (void lookup)", 1
	case errors.As(err, &d) && d.Temporary():
		w.temporary(err)
		return term + ": lookup failed: " + err.Error(), 0
	}
	return term + ": " + err.Error(), 0
}

// fetch reads the record of n.Domain and walks it.
func (w *walker) fetch(ctx context.Context, n *Node, path []string) {
	txts, err := resolver.TXT(ctx, w.q, n.Domain)
	var d *net.DNSError
	switch {
	case errors.As(err, &d) && d.IsNotFound:
		n.Error = "no SPF record: " + n.Domain + " does not exist (permerror)"
		return
	case errors.As(err, &d) && d.Temporary():
		n.Error, n.Temporary = "lookup failed: "+err.Error(), true
		w.temporary(err)
		return
	case err != nil:
		n.Error = err.Error()
		return
	}
	var recs []string
	for _, t := range txts {
		if IsSPF(t) {
			recs = append(recs, t)
		}
	}
	switch len(recs) {
	case 0:
		n.Error = "no SPF record (permerror)"
		return
	case 1:
	default:
		n.Error = fmt.Sprintf("%d SPF records (permerror: there must be one)", len(recs))
		return
	}
	n.Record = recs[0]
	rec, err := Parse(recs[0])
	if err != nil {
		n.Error = "syntax error (permerror): " + err.Error()
		return
	}
	w.record(ctx, n, rec, path)
}

// canonicalName lower-cases a name and drops its final dot, for loop detection.
func canonicalName(name string) string {
	return strings.ToLower(strings.TrimSuffix(name, "."))
}

func containsName(list []string, name string) bool {
	for _, v := range list {
		if v == name {
			return true
		}
	}
	return false
}

// Merge makes one record of several, which RFC 7208 §4.5 makes a permerror: the
// mechanisms of each in order, without repeats and without those a record's own all
// made unreachable; then the all of the first record that has one. A redirect= becomes
// an include: of the same domain (a record with an all ignores redirect=, §6.1), except
// that the first one stays a redirect= when no record has an all. Of exp= and unknown
// modifiers the first of each name is kept, at the end.
func Merge(recs ...*Record) *Record {
	var all, redirect *Term
	for _, r := range recs {
		if i := r.AllIndex(); i >= 0 && all == nil {
			all = &r.Terms[i]
		}
	}
	out := &Record{}
	seen := map[string]bool{}
	var mods []Term
	add := func(t Term) {
		key := strings.ToLower(t.Raw)
		if !seen[key] {
			seen[key] = true
			out.Terms = append(out.Terms, t)
		}
	}
	for _, r := range recs {
		end := r.AllIndex()
		for i, t := range r.Terms {
			switch {
			case t.IsModifier && t.Name == "redirect":
				if all == nil && redirect == nil {
					redirect = &r.Terms[i]
					continue
				}
				inc, err := ParseTerm("include:" + t.Value)
				if err == nil {
					add(inc)
				}
			case t.IsModifier:
				if !slicesContainsName(mods, t.Name) {
					mods = append(mods, t)
				}
			case t.Name == "all" || end >= 0 && i > end:
				// Only the chosen all is kept, and nothing a record's all hid.
			default:
				add(t)
			}
		}
	}
	if all != nil {
		out.Terms = append(out.Terms, *all)
	} else if redirect != nil {
		out.Terms = append(out.Terms, *redirect)
	}
	out.Terms = append(out.Terms, mods...)
	return out
}

func slicesContainsName(ts []Term, name string) bool {
	for _, t := range ts {
		if t.Name == name {
			return true
		}
	}
	return false
}
