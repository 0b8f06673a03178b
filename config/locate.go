package config

import (
	"fmt"
	"strings"

	"github.com/BurntSushi/toml"
)

// locateKey finds the line where key is defined, for error messages: the TOML decoder reports
// lines for syntax and type errors but not for keys it did not use. It understands table headers,
// dotted and quoted keys; it returns 0 when it cannot tell.
func locateKey(src []byte, key toml.Key) int {
	want := strings.Join(key, "\x00")
	var table []string
	for i, raw := range strings.Split(string(src), "\n") {
		line := strings.TrimSpace(raw)
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "[") {
			header := strings.Trim(strings.SplitN(line, "]", 2)[0], "[] \t")
			if strings.HasPrefix(line, "[[") {
				header = strings.Trim(strings.SplitN(line, "]]", 2)[0], "[] \t")
			}
			table = splitDotted(header)
			if matches(table, want) {
				return i + 1
			}
			continue
		}
		name, _, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		if matches(append(append([]string{}, table...), splitDotted(name)...), want) {
			return i + 1
		}
	}
	return 0
}

// at names key for an error message with its line; a key the file leaves out is placed at the line
// of the table that lacks it.
func at(src []byte, key ...string) string {
	line := 0
	for n := len(key); n > 0 && line == 0; n-- {
		line = locateKey(src, key[:n])
	}
	return fmt.Sprintf("line %d: %s", line, strings.Join(key, "."))
}

func matches(path []string, want string) bool {
	full := strings.Join(path, "\x00")
	return full == want || strings.HasPrefix(full, want+"\x00")
}

func splitDotted(s string) []string {
	var parts []string
	for _, p := range strings.Split(s, ".") {
		parts = append(parts, strings.Trim(strings.TrimSpace(p), `"'`))
	}
	return parts
}
