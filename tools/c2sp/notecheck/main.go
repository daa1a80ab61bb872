// Command notecheck checks audit-shipper's signed notes and Merkle proofs with Go's implementation of
// the same formats (golang.org/x/mod/sumdb/note and golang.org/x/mod/sumdb/tlog), so the Python code
// is judged by a third party rather than by itself.
//
//	notecheck note VKEY NOTEFILE     open the note with that verifier key; print its text
//	notecheck proof VKEY PROOFFILE   check a JSON inclusion proof against the signed checkpoint in it
//	notecheck sign SKEY TEXTFILE     sign a text (for checks in the other direction); print the note
//	notecheck root LEAVESFILE        print the base64 tree root of the leaves (hex leaf data, one a line)
//	notecheck version                print the x/mod version it was built with
//
// Exit status: 0 when the check passes, 1 with a message on stderr when it fails, 2 on usage errors.
package main

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

const usage = `usage:
  notecheck note VKEY NOTEFILE
  notecheck proof VKEY PROOFFILE
  notecheck sign SKEY TEXTFILE
  notecheck root LEAVESFILE
  notecheck version`

// usageError marks a wrong command line, which exits 2 rather than 1.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg + "\n" + usage }

func main() {
	out, err := run(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "notecheck:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	os.Stdout.WriteString(out)
}

func run(args []string) (string, error) {
	if len(args) == 0 {
		return "", usageError{"no command"}
	}
	want := map[string]int{"note": 2, "proof": 2, "sign": 2, "root": 1, "version": 0}
	n, ok := want[args[0]]
	if !ok {
		return "", usageError{fmt.Sprintf("unknown command %q", args[0])}
	}
	if len(args)-1 != n {
		return "", usageError{fmt.Sprintf("%s takes %d arguments", args[0], n)}
	}
	switch args[0] {
	case "note":
		return checkNote(args[1], args[2])
	case "proof":
		return checkProof(args[1], args[2])
	case "sign":
		return sign(args[1], args[2])
	case "root":
		return root(args[1])
	default:
		return version(), nil
	}
}

func openNote(vkey string, msg []byte) (*note.Note, error) {
	verifier, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("verifier key: %w", err)
	}
	opened, err := note.Open(msg, note.VerifierList(verifier))
	if err != nil {
		return nil, fmt.Errorf("note: %w", err)
	}
	return opened, nil
}

func checkNote(vkey, path string) (string, error) {
	msg, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	opened, err := openNote(vkey, msg)
	if err != nil {
		return "", err
	}
	return opened.Text, nil
}

// proofFile is what audit-shipper's tests write: a signed checkpoint and an inclusion proof in it.
type proofFile struct {
	Checkpoint string   `json:"checkpoint"`
	LeafIndex  int64    `json:"leaf_index"`
	TreeSize   int64    `json:"tree_size"`
	Leaf       string   `json:"leaf"`
	AuditPath  []string `json:"audit_path"`
}

func checkProof(vkey, path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	decoder := json.NewDecoder(bytes.NewReader(raw))
	decoder.DisallowUnknownFields()
	var p proofFile
	if err := decoder.Decode(&p); err != nil {
		return "", fmt.Errorf("proof file: %w", err)
	}
	opened, err := openNote(vkey, []byte(p.Checkpoint))
	if err != nil {
		return "", err
	}
	origin, size, treeRoot, err := parseCheckpoint(opened.Text)
	if err != nil {
		return "", err
	}
	if size != p.TreeSize {
		return "", fmt.Errorf("the checkpoint is for size %d, the proof for size %d", size, p.TreeSize)
	}
	leaf, err := hex.DecodeString(p.Leaf)
	if err != nil {
		return "", fmt.Errorf("leaf: %w", err)
	}
	proof := make(tlog.RecordProof, len(p.AuditPath))
	for i, encoded := range p.AuditPath {
		if proof[i], err = decodeHash(encoded); err != nil {
			return "", fmt.Errorf("audit path hash %d: %w", i, err)
		}
	}
	if err := tlog.CheckRecord(proof, size, treeRoot, p.LeafIndex, tlog.RecordHash(leaf)); err != nil {
		return "", fmt.Errorf("leaf %d of %s at size %d: %w", p.LeafIndex, origin, size, err)
	}
	return fmt.Sprintf("leaf %d is in %s at size %d\n", p.LeafIndex, origin, size), nil
}

// parseCheckpoint reads origin, tree size and root from the first three lines of a checkpoint's
// note text (c2sp.org/tlog-checkpoint); extension lines after them are allowed.
func parseCheckpoint(text string) (string, int64, tlog.Hash, error) {
	lines := strings.Split(text, "\n")
	if len(lines) < 4 || lines[0] == "" {
		return "", 0, tlog.Hash{}, errors.New("checkpoint: need origin, size and root lines")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return "", 0, tlog.Hash{}, fmt.Errorf("checkpoint: bad tree size %q", lines[1])
	}
	treeRoot, err := decodeHash(lines[2])
	if err != nil {
		return "", 0, tlog.Hash{}, fmt.Errorf("checkpoint root: %w", err)
	}
	return lines[0], size, treeRoot, nil
}

func decodeHash(encoded string) (tlog.Hash, error) {
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return tlog.Hash{}, err
	}
	if len(raw) != tlog.HashSize {
		return tlog.Hash{}, fmt.Errorf("%d bytes, not %d", len(raw), tlog.HashSize)
	}
	return tlog.Hash(raw), nil
}

func sign(skey, path string) (string, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		return "", fmt.Errorf("signer key: %w", err)
	}
	signed, err := note.Sign(&note.Note{Text: string(text)}, signer)
	if err != nil {
		return "", err
	}
	return string(signed), nil
}

// root computes the tree root the way a tlog server stores a tree: every leaf's stored hashes, then
// the tree hash over them.
func root(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var stored []tlog.Hash
	reader := tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(indexes))
		for i, index := range indexes {
			out[i] = stored[index]
		}
		return out, nil
	})
	leaves := strings.Fields(string(raw))
	for n, line := range leaves {
		leaf, err := hex.DecodeString(line)
		if err != nil {
			return "", fmt.Errorf("leaf %d: %w", n, err)
		}
		hashes, err := tlog.StoredHashes(int64(n), leaf, reader)
		if err != nil {
			return "", err
		}
		stored = append(stored, hashes...)
	}
	th, err := tlog.TreeHash(int64(len(leaves)), reader)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(th[:]) + "\n", nil
}

func version() string {
	info, ok := debug.ReadBuildInfo()
	if ok {
		for _, dep := range info.Deps {
			if dep.Path == "golang.org/x/mod" {
				return "notecheck golang.org/x/mod " + dep.Version + "\n"
			}
		}
	}
	return "notecheck golang.org/x/mod (unknown)\n"
}
