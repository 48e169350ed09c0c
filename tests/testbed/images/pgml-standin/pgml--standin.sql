-- pgml-operator's test bed: a stand-in for PostgresML's `pgml` extension, NOT PostgresML.
\echo Use "CREATE EXTENSION pgml" to load this file. \quit
CREATE FUNCTION pgml.standin() RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'the pgml-operator test bed''s stand-in extension; this is not PostgresML' $$;
