// Package policy owns the one decision of the relay: which business unit a message belongs
// to, which From and envelope sender it leaves with and why (SPEC §4), how a rewritten From
// is named, which Sender header may stay, and which domain signs it (SPEC §6). Decide is a
// pure function of its input, the configuration and the answers of an Authorizer: it never
// performs I/O except through that Authorizer and never logs. The SMTP front end, `relay
// send`, the HTTP preview and the DNS doctor all call Decide. The errors it returns for
// the client (an unknown unit, a deferred check) carry the SMTP reply to give (SMTPReply),
// so that the front end need not know them.
package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"relay/internal/config"
	"relay/internal/names"
)

// Reason says why the effective From is what it is.
type Reason string

const (
	AllowedDomain  Reason = "allowed-domain"
	UnitDomain     Reason = "unit-domain"
	SPFPass        Reason = "spf-pass"
	DKIMDelegated  Reason = "dkim-delegated"
	FallbackUnit   Reason = "fallback-unit"
	FallbackGlobal Reason = "fallback-global"
)

// Check is one live authorization result. Temporary is set for DNS timeouts and
// SERVFAILs (SPF temperror): the answer may differ if asked again later.
type Check struct {
	OK        bool
	Temporary bool
	Detail    string // e.g. "spf softfail for 203.0.113.10", "dkim delegated via CNAME"
}

// Authorizer runs the live checks of SPEC §4 for a domain (lower-case A-label).
// Implementations cache; policy calls them only when the lists did not decide.
type Authorizer interface {
	SPF(ctx context.Context, domain string) Check
	Delegated(ctx context.Context, domain string) Check
}

// Input is what the session knows about one message.
type Input struct {
	// Unit is the business unit the sender is entitled to: the authenticated user's, or
	// one the operator names (relay send -unit, the preview API); "" for none.
	Unit string
	// UnitHeader is the message's X-Relay-Unit value ("" when absent). It names the unit
	// only when Unit is "" and the client is in allow_networks with trust_unit_header.
	UnitHeader     string
	NetworkAllowed bool

	From     string // header From address, "" when the message has none
	Envelope string // MAIL FROM address, "" for the null sender <>
}

// Decision is the effective sender of one message.
type Decision struct {
	Unit string // the unit that applied, "" for none

	FromOriginal string // the candidate address (header From, else envelope, else "")
	From         string // the effective From address
	Rewritten    bool   // From differs from the candidate
	Reason       Reason
	Detail       string

	Envelope          string // effective MAIL FROM, "" for <>
	EnvelopeRewritten bool
	EnvelopeDetail    string

	// DKIMDomain is the d= the message is signed with (SPEC §6). Delegated records that
	// it is the From domain through dkim-delegated (signed with the default key).
	DKIMDomain string
	Delegated  bool

	// DisplayName is the template of a rewritten From's display name: the unit's
	// display_name, else [sender] display_name.
	DisplayName string
	// AddFrom is set when the message has no From header and the envelope sender may be
	// used as it is: the message then leaves with "From: <From>" (RFC 5322 §3.6 requires
	// one, and DKIM signs it).
	AddFrom bool

	// senderLists are the allowed-domain lists a Sender header's domain is matched
	// against (SenderAllowed): [sender]'s and the unit's.
	senderLists [][]string
}

// SenderAllowed reports whether a Sender header with addr may stay (SPEC §5): its domain
// is on the allowed lists that apply to the message.
func (d Decision) SenderAllowed(addr string) bool {
	dom := names.AddressDomain(addr)
	for _, l := range d.senderLists {
		if Match(l, dom) {
			return true
		}
	}
	return false
}

// UnknownUnitError is returned for a unit name the configuration does not define.
type UnknownUnitError struct{ Unit string }

func (e *UnknownUnitError) Error() string { return fmt.Sprintf("unknown business unit %q", e.Unit) }

// SMTPReply lets the front end answer 550 5.7.1 naming the unit.
func (e *UnknownUnitError) SMTPReply() (int, [3]int, string) {
	return 550, [3]int{5, 7, 1}, e.Error()
}

// DeferError is returned when a live check failed temporarily and [spf] on_temperror is
// "defer": the client should retry later rather than have its From rewritten.
type DeferError struct{ Detail string }

func (e *DeferError) Error() string { return "sender authorization deferred: " + e.Detail }

func (e *DeferError) SMTPReply() (int, [3]int, string) {
	return 451, [3]int{4, 4, 3}, "temporary DNS failure checking the sender, try again later"
}

// ErrNoAuthorizer is returned when live checks are enabled but no Authorizer was given.
var ErrNoAuthorizer = errors.New("policy: live checks enabled without an authorizer")

// Decide returns the effective sender for in under cfg. auth may be nil when neither SPF
// nor delegation checks are enabled.
func Decide(ctx context.Context, cfg *config.Config, auth Authorizer, in Input) (Decision, error) {
	// SPEC §4.1: the entitled unit; else, for a trusted network client, the header's.
	name := in.Unit
	if name == "" && in.NetworkAllowed && cfg.SMTP.TrustUnitHeader {
		name = strings.TrimSpace(in.UnitHeader)
	}
	unit := FindUnit(cfg, name)
	if name != "" && unit == nil {
		return Decision{}, &UnknownUnitError{Unit: name}
	}
	if auth == nil && (cfg.SPF.Enabled || cfg.DKIM.DelegationCheck) {
		return Decision{}, ErrNoAuthorizer
	}
	d := Decision{DisplayName: cfg.Sender.DisplayName, senderLists: [][]string{cfg.Sender.Domains}}
	if unit != nil {
		d.Unit = unit.Name
		d.senderLists = append(d.senderLists, unit.Domains)
		if unit.DisplayName != "" {
			d.DisplayName = unit.DisplayName
		}
	}
	fallback, fallbackReason := cfg.Sender.Fallback, FallbackGlobal
	if unit != nil && unit.Fallback != "" {
		fallback, fallbackReason = unit.Fallback, FallbackUnit
	}

	// SPEC §7: no From header makes the envelope sender the candidate.
	d.FromOriginal = in.From
	if d.FromOriginal == "" {
		d.FromOriginal = in.Envelope
	}
	deferred := ""
	if d.FromOriginal == "" {
		d.From, d.Rewritten, d.Reason, d.Detail = fallback, true, fallbackReason, "no From header and null envelope sender"
	} else {
		v := judge(ctx, cfg, auth, unit, d.FromOriginal, true)
		if v.ok {
			d.From, d.Reason, d.Detail = d.FromOriginal, v.reason, v.detail
			d.Delegated = v.reason == DKIMDelegated
		} else {
			d.From, d.Rewritten, d.Reason, d.Detail = fallback, true, fallbackReason, v.detail
			if v.temporary {
				deferred = v.detail
			}
		}
	}

	// The envelope is judged by the lists and SPF only: a DKIM key says nothing about who
	// may use an address in MAIL FROM.
	if in.Envelope != "" {
		v := judge(ctx, cfg, auth, unit, in.Envelope, false)
		d.EnvelopeDetail = v.detail
		if v.ok {
			d.Envelope = in.Envelope
		} else {
			d.Envelope, d.EnvelopeRewritten = bounceAddress(cfg, unit, fallback), true
			if v.temporary && deferred == "" {
				deferred = v.detail
			}
		}
	}
	if deferred != "" && cfg.SPF.OnTempError == "defer" {
		return Decision{}, &DeferError{Detail: deferred}
	}

	d.AddFrom = in.From == "" && !d.Rewritten && d.From != ""
	d.DKIMDomain = dkimDomain(cfg, d)
	return d, nil
}

// FindUnit returns the unit of cfg named name (names compare without case), or nil.
func FindUnit(cfg *config.Config, name string) *config.Unit {
	if name == "" {
		return nil
	}
	for i := range cfg.Units {
		if strings.EqualFold(cfg.Units[i].Name, name) {
			return &cfg.Units[i]
		}
	}
	return nil
}

func bounceAddress(cfg *config.Config, unit *config.Unit, fallback string) string {
	if unit != nil && unit.BounceAddress != "" {
		return unit.BounceAddress
	}
	if cfg.Sender.BounceAddress != "" {
		return cfg.Sender.BounceAddress
	}
	return fallback
}

// dkimDomain applies SPEC §6: the effective From domain when it has its own key or
// publishes ours; else [dkim] domain (which config defaults to the fallback's domain).
// A From in a subdomain of a domain with its own key is signed with that parent's key:
// under DMARC's relaxed alignment (the default, RFC 7489 §3.1.1) d=example.com aligns with
// From: x@mail.example.com, where the fallback's domain would not.
func dkimDomain(cfg *config.Config, d Decision) string {
	dom := names.AddressDomain(d.From)
	best := ""
	for _, k := range cfg.DKIM.Keys {
		kd := strings.ToLower(k.Domain)
		if kd == dom {
			return dom
		}
		if strings.HasSuffix(dom, "."+kd) && len(kd) > len(best) {
			best = kd
		}
	}
	if d.Delegated {
		return dom
	}
	if best != "" {
		return best
	}
	if cfg.DKIM.Domain != "" {
		return cfg.DKIM.Domain
	}
	return names.AddressDomain(cfg.Sender.Fallback)
}

type verdict struct {
	ok        bool
	temporary bool
	reason    Reason
	detail    string
}

func judge(ctx context.Context, cfg *config.Config, auth Authorizer, unit *config.Unit, addr string, delegation bool) verdict {
	dom := names.AddressDomain(addr)
	if dom == "" {
		return verdict{detail: fmt.Sprintf("%q: no valid domain", addr)}
	}
	if Match(cfg.Sender.Domains, dom) {
		return verdict{ok: true, reason: AllowedDomain, detail: dom + ": listed in [sender] allowed_domains"}
	}
	if unit != nil && Match(unit.Domains, dom) {
		return verdict{ok: true, reason: UnitDomain, detail: dom + ": listed in unit " + unit.Name}
	}
	why := []string{"not listed"}
	temporary := false
	if cfg.SPF.Enabled {
		c := auth.SPF(ctx, dom)
		if c.OK {
			return verdict{ok: true, reason: SPFPass, detail: dom + ": " + c.Detail}
		}
		why = append(why, c.Detail)
		temporary = temporary || c.Temporary
	}
	if delegation && cfg.DKIM.DelegationCheck {
		c := auth.Delegated(ctx, dom)
		if c.OK {
			return verdict{ok: true, reason: DKIMDelegated, detail: dom + ": " + c.Detail}
		}
		why = append(why, c.Detail)
		temporary = temporary || c.Temporary
	}
	return verdict{temporary: temporary, detail: dom + ": " + strings.Join(why, "; ")}
}

// Match reports whether domain (normalised) is in patterns (normalised): an exact entry,
// or "*.parent" for any subdomain of parent, not parent itself.
func Match(patterns []string, domain string) bool {
	for _, p := range patterns {
		if rest, ok := strings.CutPrefix(p, "*."); ok {
			if strings.HasSuffix(domain, "."+rest) {
				return true
			}
		} else if p == domain {
			return true
		}
	}
	return false
}
