/*-------------------------------------------------------------------------
 * cs_timestamp.c
 *	  Strict ISO 8601 parsing that never raises (see cs_timestamp.h).
 *
 * PostgreSQL's timestamptz_in() accepts far more than the wire format and
 * reports errors by raising, which the event parser must not do.
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "cs_timestamp.h"
#include "utils/datetime.h"

/* Read exactly n decimal digits at *p into *out and advance *p. */
static bool
read_digits(const char **p, int n, int *out)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if ((*p)[i] < '0' || (*p)[i] > '9')
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

/* Expect the character c at *p and advance past it. */
static bool
expect(const char **p, char c)
{
	if (**p != c)
		return false;
	(*p)++;
	return true;
}

/* Fractional seconds, up to microseconds (extra digits are truncated). */
static void
read_fraction(const char **p, fsec_t *fsec)
{
	int			scale = 100000;

	*fsec = 0;
	if (**p != '.')
		return;
	(*p)++;
	while (**p >= '0' && **p <= '9')
	{
		*fsec += (**p - '0') * scale;
		scale /= 10;
		(*p)++;
	}
}

/* Zone designator into seconds west of UTC (PostgreSQL's sign convention). */
static bool
read_zone(const char **p, int *tz_west)
{
	int			hh,
				mm,
				sign;

	if (**p == 'Z' || **p == 'z')
	{
		(*p)++;
		*tz_west = 0;
		return true;
	}
	if (**p != '+' && **p != '-')
		return false;
	sign = (**p == '+') ? -1 : 1;
	(*p)++;
	if (!read_digits(p, 2, &hh))
		return false;
	if (**p == ':')
		(*p)++;
	if (!read_digits(p, 2, &mm) || hh > 15 || mm > 59)
		return false;
	*tz_west = sign * (hh * 3600 + mm * 60);
	return true;
}

bool
cs_parse_iso8601(const char *s, TimestampTz *out)
{
	struct pg_tm tm;
	fsec_t		fsec;
	int			tz_west;
	const char *p = s;

	memset(&tm, 0, sizeof(tm));
	if (!read_digits(&p, 4, &tm.tm_year) || !expect(&p, '-') ||
		!read_digits(&p, 2, &tm.tm_mon) || !expect(&p, '-') ||
		!read_digits(&p, 2, &tm.tm_mday))
		return false;
	if (*p != 'T' && *p != 't' && *p != ' ')
		return false;
	p++;
	if (!read_digits(&p, 2, &tm.tm_hour) || !expect(&p, ':') ||
		!read_digits(&p, 2, &tm.tm_min) || !expect(&p, ':') ||
		!read_digits(&p, 2, &tm.tm_sec))
		return false;
	read_fraction(&p, &fsec);
	if (!read_zone(&p, &tz_west) || *p != '\0')
		return false;
	if (tm.tm_year < 1 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
		tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1] ||
		tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
		return false;
	return tm2timestamp(&tm, fsec, &tz_west, out) == 0;
}
