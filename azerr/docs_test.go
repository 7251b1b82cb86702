package azerr

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// docRow is one row of a service's table in docs/errors.md.
type docRow struct {
	service Service
	number  int
	name    string
	status  int
	line    int
}

// docTables reads the tables of docs/errors.md: under "## DPS" and
// "## IoT Hub", the rows of the table whose header starts
// "| errorCode | name | status |".
func docTables(t *testing.T) []docRow {
	t.Helper()
	f, err := os.Open("../docs/errors.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sections := map[string]Service{"## DPS": DPS, "## IoT Hub": Hub}
	var (
		rows    []docRow
		service Service
		inTable bool
	)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "#") {
			service, inTable = sections[line], false
			continue
		}
		if service == 0 {
			continue
		}
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) >= 3 && cells[0] == "errorCode" {
			if cells[1] != "name" || cells[2] != "status" {
				t.Fatalf("docs/errors.md:%d: header %q, want errorCode | name | status | …", n, line)
			}
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(cells[0], "---") {
			continue
		}
		number, err1 := strconv.Atoi(cells[0])
		status, err2 := strconv.Atoi(cells[2])
		if err1 != nil || err2 != nil {
			t.Errorf("docs/errors.md:%d: row %q", n, line)
			continue
		}
		rows = append(rows, docRow{service: service, number: number, name: cells[1], status: status, line: n})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rows
}

// TestDocsMatchTable holds docs/errors.md to the table: every entry is
// documented, under its service, with its number, name and status, and
// every documented row is an entry.
func TestDocsMatchTable(t *testing.T) {
	rows := docTables(t)
	documented := map[Code]bool{}
	for _, r := range rows {
		c, ok := Lookup(r.service, r.number)
		switch {
		case !ok:
			t.Errorf("docs/errors.md:%d: %s %d is not in the table", r.line, r.service, r.number)
		case documented[c]:
			t.Errorf("docs/errors.md:%d: %v documented twice", r.line, c)
		case c.Name() != r.name || c.Status() != r.status:
			t.Errorf("docs/errors.md:%d: %s %d documented as %s %d, the table has %s %d",
				r.line, r.service, r.number, r.name, r.status, c.Name(), c.Status())
		}
		documented[c] = true
	}
	for _, c := range Codes() {
		if !documented[c] {
			t.Errorf("%s %v is not documented in docs/errors.md", c.Service(), c)
		}
	}
}
