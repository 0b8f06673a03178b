// Package derivation reads what hearth needs of a .drv file: its output paths.
package derivation

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/hearth-ci/hearth/nix"
)

// maxSize bounds what is read of a .drv file; real ones are kilobytes, rarely a megabyte.
const maxSize = 64 << 20

// OutputsOf returns the output paths a derivation file names.
func OutputsOf(drvPath string) ([]string, error) {
	b, err := os.ReadFile(drvPath)
	if err != nil {
		return nil, fmt.Errorf("read derivation: %w", err)
	}
	if len(b) > maxSize {
		return nil, fmt.Errorf("derivation %s is larger than %d bytes", drvPath, maxSize)
	}
	outs, err := Outputs(string(b))
	if err != nil {
		return nil, fmt.Errorf("derivation %s: %w", drvPath, err)
	}
	return outs, nil
}

// Outputs parses the outputs list that opens a derivation in Nix's ATerm form,
// Derive([("out","/nix/store/…","",""),…],…), and returns the paths it names. A floating
// content-addressed output names none until it is built: it is left out.
func Outputs(src string) ([]string, error) {
	p := &parser{s: src}
	if !p.eat("Derive([") {
		return nil, errors.New(`not a derivation: it does not begin with "Derive(["`)
	}
	var outs []string
	for first := true; !p.eat("]"); first = false {
		if !first && !p.eat(",") {
			return nil, p.fail(`"," or "]"`)
		}
		if !p.eat("(") {
			return nil, p.fail(`"("`)
		}
		var fields [4]string
		for i := range fields {
			if i > 0 && !p.eat(",") {
				return nil, p.fail(`","`)
			}
			s, err := p.str()
			if err != nil {
				return nil, err
			}
			fields[i] = s
		}
		if !p.eat(")") {
			return nil, p.fail(`")"`)
		}
		if fields[1] == "" {
			continue
		}
		if err := nix.CheckStorePath(fields[1]); err != nil {
			return nil, fmt.Errorf("output %s: %w", fields[0], err)
		}
		outs = append(outs, fields[1])
	}
	return outs, nil
}

type parser struct {
	s   string
	pos int
}

func (p *parser) eat(tok string) bool {
	if strings.HasPrefix(p.s[p.pos:], tok) {
		p.pos += len(tok)
		return true
	}
	return false
}

func (p *parser) fail(want string) error {
	return fmt.Errorf("malformed outputs list at byte %d: want %s", p.pos, want)
}

// str reads a quoted string with ATerm's escapes.
func (p *parser) str() (string, error) {
	if !p.eat(`"`) {
		return "", p.fail("a string")
	}
	var b strings.Builder
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		p.pos++
		switch c {
		case '"':
			return b.String(), nil
		case '\\':
			if p.pos == len(p.s) {
				return "", p.fail("an escaped character")
			}
			e := p.s[p.pos]
			p.pos++
			switch e {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(e)
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", p.fail(`the end of a string`)
}
