/*
 * The test bed's stand-in for PostgresML's `pgml` library. NOT PostgresML.
 *
 * The PostgresML image cannot be pulled on the test bed's machines, and PostgresML is not
 * packaged for Debian. The operator always puts `pgml` in shared_preload_libraries, as the
 * PostgresML image needs; so that the test bed's PostgreSQL 15 (Debian's) starts with the
 * operator's configuration unchanged, this library of the same name is preloaded instead.
 * It does nothing but say, in the server log, that it is a stand-in.
 */
#include "postgres.h"
#include "fmgr.h"

PG_MODULE_MAGIC;

void _PG_init(void);

void
_PG_init(void)
{
	ereport(LOG,
			(errmsg("pgml: the pgml-operator test bed's stand-in library is loaded; this is not PostgresML")));
}
