// Package version reports which berth this is, from the module build
// information Go embeds in every binary (runtime/debug.ReadBuildInfo).
package version

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Info is berth's build.
type Info struct {
	// Version is the main module's version: a tag (v1.2.3) when built with
	// `go install …@version`, a pseudo-version or "(devel)" otherwise.
	Version string `json:"version"`
	// Revision, Time and Modified come from the VCS stamp of a build in a
	// checkout (-buildvcs, the default).
	Revision  string `json:"revision,omitempty"`
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified,omitempty"`
	GoVersion string `json:"goVersion"`
	Path      string `json:"path"`
}

// Get reads the build information.
func Get() Info {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Info{Version: "unknown"}
	}
	info := Info{Version: bi.Main.Version, GoVersion: bi.GoVersion, Path: bi.Main.Path}
	if info.Version == "" {
		info.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Revision = s.Value
		case "vcs.time":
			info.Time = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	return info
}

// String is the one line `berth --version` prints.
func (i Info) String() string {
	var b strings.Builder
	b.WriteString(i.Version)
	if i.Revision != "" {
		rev := i.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		fmt.Fprintf(&b, " (%s", rev)
		if i.Modified {
			b.WriteString(", modified")
		}
		if i.Time != "" {
			b.WriteString(", " + i.Time)
		}
		b.WriteString(")")
	}
	fmt.Fprintf(&b, " %s", i.GoVersion)
	return b.String()
}
