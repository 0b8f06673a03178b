// Package secretfile reads the credentials hearth keeps in files on the runner host: cache tokens,
// S3 keys, signing keys, deploy keys. A secret is never put in the config file itself, and no
// error from here repeats what a file holds: errors name the file and what is wrong with it.
package secretfile

import (
	"fmt"
	"os"
	"strings"
)

// Read returns the content of the file at path without surrounding white space. what names the
// secret for people ("the Attic token"); an unset path, an unreadable file and an empty one are
// errors that say which.
func Read(path, what string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("no file is set for %s", what)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", what, err)
	}
	s := strings.TrimSpace(string(raw))
	if s == "" {
		return "", fmt.Errorf("%s file %s is empty", what, path)
	}
	return s, nil
}
