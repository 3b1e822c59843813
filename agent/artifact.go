package agent

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Artifact URLs and redirects.
//
// An artifact is fetched from the URL its release names (signed with the
// release when the agent has trusted keys). A redirect is followed only to
// the same host (scheme, host name and port of the release's URL), never
// from https to http, at most maxArtifactRedirects times, and to another
// host only when Config.ArtifactRedirectHosts (--artifact-redirect-hosts)
// names it: a redirect could otherwise send the agent to any address it can
// reach (a metadata service, an internal page). Nothing is reported of what
// a refused redirect pointed at but its host.

// maxArtifactRedirects bounds the redirects followed for one download.
const maxArtifactRedirects = 5

// errRedirectRefused: the artifact URL redirected where the agent does not
// follow. Not retried.
var errRedirectRefused = errors.New("redirect not followed")

// artifactTransport is shared by every download (one connection pool).
var artifactTransport = &http.Transport{
	Proxy:                 http.ProxyFromEnvironment,
	ResponseHeaderTimeout: 30 * time.Second,
	TLSHandshakeTimeout:   10 * time.Second,
	IdleConnTimeout:       90 * time.Second,
}

// artifactClient is the HTTP client of one download: the shared transport
// and the redirect policy of allowed (Config.ArtifactRedirectHosts).
func artifactClient(allowed []string) *http.Client {
	return &http.Client{Transport: artifactTransport, CheckRedirect: redirectPolicy(allowed).check}
}

// redirectPolicy is the list of other hosts redirects may go to: "host"
// (the scheme's default port), "host:port", or "*.domain" (any host below
// domain, default port).
type redirectPolicy []string

func (p redirectPolicy) check(req *http.Request, via []*http.Request) error {
	if len(via) > maxArtifactRedirects {
		return fmt.Errorf("%w: more than %d redirects", errRedirectRefused, maxArtifactRedirects)
	}
	from, to := via[0].URL, req.URL
	if from.Scheme == "https" && to.Scheme != "https" {
		return fmt.Errorf("%w: from https to %s (%s)", errRedirectRefused, to.Scheme, to.Host)
	}
	if hostPort(from) == hostPort(to) && from.Scheme == to.Scheme {
		return nil
	}
	if p.allows(to) {
		return nil
	}
	return fmt.Errorf("%w: to another host, %s (list it in --artifact-redirect-hosts to allow it)", errRedirectRefused, to.Host)
}

func (p redirectPolicy) allows(u *url.URL) bool {
	hp := hostPort(u)
	host, port, _ := net.SplitHostPort(hp)
	for _, e := range p {
		if d, ok := strings.CutPrefix(strings.ToLower(e), "*."); ok {
			if port == defaultPort(u.Scheme) && strings.HasSuffix(host, "."+d) {
				return true
			}
			continue
		}
		eu, err := url.Parse("http://" + e)
		if err != nil {
			continue
		}
		ep := eu.Port()
		if ep == "" {
			ep = defaultPort(u.Scheme)
		}
		if net.JoinHostPort(strings.ToLower(eu.Hostname()), ep) == hp {
			return true
		}
	}
	return false
}

// hostPort is u's host name (lower case) and port (the scheme's default if
// none), joined.
func hostPort(u *url.URL) string {
	port := u.Port()
	if port == "" {
		port = defaultPort(u.Scheme)
	}
	return net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}

func defaultPort(scheme string) string {
	if scheme == "https" {
		return "443"
	}
	return "80"
}

// checkRedirectHost validates one entry of Config.ArtifactRedirectHosts.
func checkRedirectHost(e string) error {
	if e == "" {
		return errors.New("empty host")
	}
	h := strings.TrimPrefix(e, "*.")
	u, err := url.Parse("http://" + h)
	if err != nil || u.Host != h || u.Hostname() == "" || strings.Contains(h, "*") {
		return fmt.Errorf("%q: want a host name, host:port, or *.domain", e)
	}
	if strings.HasPrefix(e, "*.") && u.Port() != "" {
		return fmt.Errorf("%q: a *.domain entry takes no port", e)
	}
	return nil
}
