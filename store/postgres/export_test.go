package postgres

import "context"

// SessionSetting reads a setting as the store's own sessions see it.
func SessionSetting(ctx context.Context, s *Store, name string) (string, error) {
	var v string
	err := s.pool.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v)
	return v, err
}
