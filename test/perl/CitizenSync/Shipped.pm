=pod

=head1 NAME

CitizenSync::Shipped - every SQL statement citizen_sync ships or documents,
and what a statement resolves to, for the 4xx security tests

=head1 SYNOPSIS

  use CitizenSync::Shipped;

  my @q = CitizenSync::Shipped::exporter_queries($root);   # monitoring/*.yaml
  my @b = CitizenSync::Shipped::doc_blocks($root);         # README.md, docs/*.md
  my @d = CitizenSync::Shipped::demo_strings($root);       # demo/run_demo.sh

  my $tree = CitizenSync::Shipped::parse_node_tree($prosqlbody_text);
  my @calls = CitizenSync::Shipped::calls_in_tree($tree);

=head1 DESCRIPTION

Extraction is by file kind:

=over

=item * exporter queries: every C<query:> of monitoring/*.yaml (and the SQL
statements written in its comments);

=item * README.md and docs/*.md: fenced C<```sql> blocks (split into
statements), C<```plpgsql> blocks (PL/pgSQL fragments, kept whole), the
C<psql -c "..."> strings of C<```sh> blocks, and inline code spans that are
a C<SELECT> or C<SHOW> statement;

=item * demo/run_demo.sh: the bodies of C<<<'SQL'> here-documents (split into
statements), every double-quoted string that starts with an SQL command,
and the conditions passed to its C<wait_caches> function.

=back

Resolution: a statement is turned into a SQL-standard function body
(C<BEGIN ATOMIC ... END>), whose parse tree PostgreSQL stores in
C<pg_proc.prosqlbody> with every function and operator bound by OID, exactly
as the statement resolves in that session.  parse_node_tree() reads that
text; calls_in_tree() lists every function, operator and aggregate call with
the types of its arguments as written (implicit casts unwrapped) and as
passed.

=cut

package CitizenSync::Shipped;

use strict;
use warnings;

use Carp;
use CPAN::Meta::YAML;

sub _slurp
{
	my ($path) = @_;
	open my $fh, '<:encoding(UTF-8)', $path or croak "cannot open $path: $!";
	local $/;
	return scalar <$fh>;
}

=pod

=head1 FUNCTIONS

=over

=item normalize($sql)

The statement with comments removed and whitespace collapsed: the key under
which a test describes how it runs a statement.

=cut

sub normalize
{
	my ($sql) = @_;
	my ($out, $code) = ('', '');
	for my $piece (_lex_sql($sql), [ 'quoted', '' ])
	{
		my ($kind, $text) = @$piece;
		if ($kind eq 'quoted')
		{
			$out .= ($code =~ s/\s+/ /gr) . $text;
			$code = '';
		}
		else
		{
			$code .= $kind eq 'comment' ? ' ' : $text;
		}
	}
	$out =~ s/^\s+|\s+$//g;
	$out =~ s/\s*;$//;
	return $out;
}

# Split SQL text into pieces: [code|quoted|comment, text].  Knows single and
# double quotes, dollar quotes and -- comments.
sub _lex_sql
{
	my ($sql) = @_;
	my @pieces;
	my $code = '';
	pos($sql) = 0;
	while (pos($sql) < length $sql)
	{
		if ($sql =~ /\G('(?:[^']|'')*'|"(?:[^"]|"")*")/gc)
		{
			push @pieces, [ 'code', $code ], [ 'quoted', $1 ];
			$code = '';
		}
		elsif ($sql =~ /\G(\$([A-Za-z_]\w*)?\$)/gc)
		{
			my $tag = $1;
			my $start = pos($sql);
			my $end = index($sql, $tag, $start);
			$end = length($sql) - length($tag) if $end < 0;
			push @pieces, [ 'code', $code ],
			  [ 'quoted', $tag . substr($sql, $start, $end - $start) . $tag ];
			$code = '';
			pos($sql) = $end + length $tag;
		}
		elsif ($sql =~ /\G(--[^\n]*)/gc)
		{
			push @pieces, [ 'code', $code ], [ 'comment', $1 ];
			$code = '';
		}
		elsif ($sql =~ /\G([^'"\$-]+|.)/gcs)
		{
			$code .= $1;
		}
	}
	push @pieces, [ 'code', $code ];
	return grep { $_->[1] ne '' } @pieces;
}

=pod

=item split_statements($sql)

The statements of an SQL script (split at semicolons outside quotes and
comments), each with its comments, without the final semicolon; empty
statements are dropped.

=cut

sub split_statements
{
	my ($sql) = @_;
	my @stmts;
	my $cur = '';
	for my $piece (_lex_sql($sql))
	{
		my ($kind, $text) = @$piece;
		if ($kind ne 'code')
		{
			$cur .= $text;
			next;
		}
		my @parts = split /;/, $text, -1;
		$cur .= shift @parts;
		for my $p (@parts)
		{
			push @stmts, $cur;
			$cur = $p;
		}
	}
	push @stmts, $cur;
	# a comment on the line of a semicolon belongs to the statement it ends
	for my $i (1 .. $#stmts)
	{
		$stmts[ $i - 1 ] .= $1 if $stmts[$i] =~ s/^([ \t]*--[^\n]*)//;
	}
	return grep { normalize($_) ne '' } map { s/^\s*\n//r =~ s/\s+$//r } @stmts;
}

=pod

=item exporter_queries($root)

The C<query:> entries of every YAML file of monitoring/ that has some (the
postgres_exporter query files): a list of hashes {file, name, sql, master}.
Dies if the count differs from the number of C<query:> lines (a query the
YAML reader would miss).

=cut

sub exporter_queries
{
	my ($root) = @_;
	my @out;
	for my $path (sort glob("$root/monitoring/*.yaml"), sort glob("$root/monitoring/*.yml"))
	{
		my $text = _slurp($path);
		my $nquery = () = $text =~ /^\s+query:/mg;
		next unless $nquery;
		my $yaml = CPAN::Meta::YAML->read_string($text)
		  or croak "cannot parse $path: " . CPAN::Meta::YAML->errstr;
		my $doc = $yaml->[0];
		my $file = $path =~ s{^\Q$root\E/}{}r;
		my @mine = map { { file => $file, name => $_, sql => $doc->{$_}{query},
				master => ($doc->{$_}{master} // '') eq 'true' } }
		  grep { ref $doc->{$_} eq 'HASH' && defined $doc->{$_}{query} } sort keys %$doc;
		croak "$file: $nquery query: lines but " . scalar(@mine) . ' queries read'
		  unless @mine == $nquery;
		push @out, @mine;
	}
	return @out;
}

=pod

=item yaml_comment_statements($root)

SQL statements written in the comments of monitoring/*.yaml (e.g. how to
create the exporter's role): a list of {file, line, sql}.  A statement
starts at a comment line whose text begins with an SQL command and ends at
the first semicolon.

=cut

sub yaml_comment_statements
{
	my ($root) = @_;
	my @out;
	for my $path (sort glob("$root/monitoring/*.yaml"), sort glob("$root/monitoring/*.yml"))
	{
		my $file = $path =~ s{^\Q$root\E/}{}r;
		my ($cur, $start);
		my $n = 0;
		for my $line (split /\n/, _slurp($path))
		{
			$n++;
			my ($c) = $line =~ /^\s*#\s?(.*)$/ or do { undef $cur; next };
			if (!defined $cur && $c =~ /^\s*(SELECT|CREATE|ALTER|GRANT|REVOKE|SHOW)\b/)
			{
				($cur, $start) = ('', $n);
			}
			next unless defined $cur;
			$cur .= "$c\n";
			if ($c =~ /;\s*$/)
			{
				push @out, { file => $file, line => $start, sql => $_ } for split_statements($cur);
				undef $cur;
			}
		}
	}
	return @out;
}

=pod

=item doc_blocks($root)

The SQL of README.md and docs/*.md, as blocks {file, line, lang, text,
statements}: lang C<sql> (a fenced block; statements = its statements),
C<plpgsql> (a fragment; statements = [the whole text]), C<psql-c> (the
string of a C<psql -c> in a C<```sh> block) or C<inline> (a code span).

=cut

sub doc_blocks
{
	my ($root) = @_;
	my @blocks;
	for my $path ("$root/README.md", sort glob("$root/docs/*.md"))
	{
		my $file = $path =~ s{^\Q$root\E/}{}r;
		my @lines = split /\n/, _slurp($path);
		my ($lang, $start, $body);
		for my $i (0 .. $#lines)
		{
			my $line = $lines[$i];
			if (defined $lang)
			{
				if ($line =~ /^\s*```\s*$/)
				{
					push @blocks, _doc_block($file, $start, $lang, $body);
					undef $lang;
				}
				else
				{
					$body .= "$line\n";
				}
				next;
			}
			if ($line =~ /^\s*```\s*(\w*)\s*$/)
			{
				($lang, $start, $body) = (lc($1), $i + 2, '');
				next;
			}
			while ($line =~ /`([^`]+)`/g)
			{
				my $span = $1;
				next unless $span =~ /^\s*(SELECT|SHOW)\s/;
				push @blocks, { file => $file, line => $i + 1, lang => 'inline',
					text => $span, statements => [ split_statements($span) ] };
			}
		}
		croak "$file: unterminated code block at line $start" if defined $lang;
	}
	return @blocks;
}

sub _doc_block
{
	my ($file, $line, $lang, $body) = @_;
	if ($lang eq 'sql')
	{
		return { file => $file, line => $line, lang => 'sql', text => $body,
			statements => [ split_statements($body) ] };
	}
	if ($lang eq 'plpgsql')
	{
		return { file => $file, line => $line, lang => 'plpgsql', text => $body,
			statements => [ $body =~ s/\s+$//r ] };
	}
	if ($lang eq 'sh' || $lang eq 'bash' || $lang eq 'shell')
	{
		# the psql commands of a block run one after the other: one block
		my @sql;
		while ($body =~ /\bpsql\b[^\n]*?\s-c\s+"((?:[^"\\]|\\.)*)"/g)
		{
			push @sql, $1 =~ s/\\(.)/$1/gr;
		}
		return () unless @sql;
		return { file => $file, line => $line, lang => 'psql-c', text => join(";\n", @sql),
			statements => [ map { split_statements($_) } @sql ] };
	}
	return ();
}

=pod

=item demo_strings($root)

The SQL of demo/run_demo.sh, with its shell variables as written: a list of
{file, line, kind, text}, kind C<sql> (a statement) or C<condition> (an
argument of wait_caches, which the demo puts after WHERE).

=cut

sub demo_strings
{
	my ($root) = @_;
	my $file = 'demo/run_demo.sh';
	my $text = _slurp("$root/$file");
	my @out;
	my $state = 'code';
	my ($heredoc_tag, $heredoc_sql, $heredoc_line, $str, $str_line, $before);
	my $line = 1;
	my @pending_heredocs;

	# A small shell lexer: quotes, comments and here-documents.
	my @chars = split //, $text;
	for (my $i = 0; $i <= $#chars; $i++)
	{
		my $c = $chars[$i];
		if ($state eq 'heredoc')
		{
			# at the start of a line of the here-document
			my $eol = index($text, "\n", $i);
			$eol = length $text if $eol < 0;
			my $l = substr($text, $i, $eol - $i);
			if ($l eq $heredoc_tag)
			{
				if ($heredoc_tag eq 'SQL')
				{
					push @out, map { { file => $file, line => $heredoc_line, kind => 'sql', text => $_ } }
					  split_statements($heredoc_sql);
				}
				$state = 'code';
			}
			else
			{
				$heredoc_sql .= "$l\n";
			}
			$i = $eol;
			$line++;
			next;
		}
		$line++ if $c eq "\n";
		if ($state eq 'dquote')
		{
			if ($c eq '\\') { $str .= $chars[++$i]; next; }
			if ($c eq '"')
			{
				$state = 'code';
				if ($str =~ /^\s*(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|GRANT|REVOKE|SET|WITH|SHOW|DROP|TRUNCATE)\b/)
				{
					push @out, { file => $file, line => $str_line, kind => 'sql', text => $str };
				}
				elsif ($before =~ /\bwait_caches\s+$/)
				{
					push @out, { file => $file, line => $str_line, kind => 'condition', text => $str };
				}
				next;
			}
			$str .= $c;
			next;
		}
		if ($state eq 'squote')
		{
			$state = 'code' if $c eq "'";
			next;
		}
		if ($state eq 'comment')
		{
			$state = 'code' if $c eq "\n";
		}
		if ($state eq 'code')
		{
			if ($c eq "\n" && @pending_heredocs)
			{
				($heredoc_tag) = shift @pending_heredocs;
				($heredoc_sql, $heredoc_line, $state) = ('', $line, 'heredoc');
				next;
			}
			if ($c eq '"')
			{
				my $sol = rindex($text, "\n", $i - 1);
				$before = substr($text, $sol + 1, $i - $sol - 1);
				($state, $str, $str_line) = ('dquote', '', $line);
			}
			elsif ($c eq "'")
			{
				$state = 'squote';
			}
			elsif ($c eq '#' && ($i == 0 || $chars[ $i - 1 ] =~ /\s/))
			{
				$state = 'comment';
			}
			elsif ($c eq '<' && substr($text, $i) =~ /^<<-?\s*(['"]?)(\w+)\1/)
			{
				push @pending_heredocs, $2;
				$i += length($&) - 1;
			}
			elsif ($c eq '\\')
			{
				$i++;
			}
		}
	}
	return @out;
}

=pod

=item parse_node_tree($text)

Parses PostgreSQL's text form of a node tree (pg_node_tree::text) into
hashes (C<_type> = the node name, one key per field) and arrays; C<< <> >> is
undef.

=cut

sub parse_node_tree
{
	my ($text) = @_;
	my @t;
	while ($text =~ /\G\s*(\{|\}|\(|\)|\[[^\]]*\]|"(?:[^"\\]|\\.)*"|(?:[^\s{}()"\\]|\\.)+)/gcs)
	{
		push @t, $1;
	}
	my $i = 0;
	my $v = _node_value(\@t, \$i);
	croak "trailing tokens in node tree at $i" if $i < @t;
	return $v;
}

sub _node_value
{
	my ($t, $i) = @_;
	my $tok = $t->[ $$i++ ];
	croak 'unexpected end of node tree' unless defined $tok;
	if ($tok eq '{')
	{
		my %node = (_type => $t->[ $$i++ ]);
		while ($t->[$$i] ne '}')
		{
			my $f = $t->[ $$i++ ];
			next unless $f =~ /^:(\w+)$/;    # extra tokens of a Const's value
			my $field = $1;
			if ($t->[$$i] eq '}' || $t->[$$i] =~ /^:\w+$/)
			{
				$node{$field} = undef;
				next;
			}
			$node{$field} = _node_value($t, $i);
		}
		$$i++;
		return \%node;
	}
	if ($tok eq '(')
	{
		my @list;
		push @list, _node_value($t, $i) while $t->[$$i] ne ')';
		$$i++;
		return \@list;
	}
	return undef if $tok eq '<>';
	return $tok;
}

# The type OID of an expression node (undef when unknown).
my %TYPE_FIELD = (
	VAR => 'vartype', CONST => 'consttype', PARAM => 'paramtype',
	FUNCEXPR => 'funcresulttype', OPEXPR => 'opresulttype', NULLIFEXPR => 'opresulttype',
	AGGREF => 'aggtype', WINDOWFUNC => 'wintype', RELABELTYPE => 'resulttype',
	COERCEVIAIO => 'resulttype', ARRAYCOERCEEXPR => 'resulttype', CASEEXPR => 'casetype',
	COALESCEEXPR => 'coalescetype', MINMAXEXPR => 'minmaxtype', ARRAYEXPR => 'array_typeid',
	ROWEXPR => 'row_typeid', FIELDSELECT => 'resulttype', COERCETODOMAIN => 'resulttype',
	CONVERTROWTYPEEXPR => 'resulttype', SQLVALUEFUNCTION => 'type',
	SUBSCRIPTINGREF => 'refrestype', CASETESTEXPR => 'typeId');
my %BOOL_NODE = map { $_ => 1 }
  qw(BOOLEXPR NULLTEST BOOLEANTEST SCALARARRAYOPEXPR DISTINCTEXPR ROWCOMPAREEXPR);

sub _expr_type
{
	my ($n) = @_;
	return undef unless ref $n eq 'HASH';
	my $ty = $n->{_type};
	return $n->{ $TYPE_FIELD{$ty} } if $TYPE_FIELD{$ty};
	return 16 if $BOOL_NODE{$ty};
	return _expr_type($n->{arg}) if $ty eq 'COLLATEEXPR';
	return 16 if $ty eq 'SUBLINK' && ($n->{subLinkType} // '') eq '0';
	return undef;
}

# The expression as written: implicit casts (CoercionForm 2) removed.
sub _unwrap
{
	my ($n) = @_;
	while (ref $n eq 'HASH')
	{
		my $ty = $n->{_type};
		if ($ty eq 'FUNCEXPR' && ($n->{funcformat} // '') eq '2')
		{
			$n = $n->{args}[0];
		}
		elsif ($ty eq 'RELABELTYPE' && ($n->{relabelformat} // '') eq '2'
			|| $ty eq 'COERCEVIAIO' && ($n->{coerceformat} // '') eq '2'
			|| $ty eq 'ARRAYCOERCEEXPR' && ($n->{coerceformat} // '') eq '2')
		{
			$n = $n->{arg};
		}
		else
		{
			last;
		}
	}
	return $n;
}

sub _arg_info
{
	my ($n) = @_;
	my $w = _unwrap($n);
	return { type => _expr_type($n), written => _expr_type($w),
		literal => (ref $w eq 'HASH' && $w->{_type} eq 'CONST') ? 1 : 0 };
}

=pod

=item calls_in_tree($tree)

Every function, operator, aggregate and window function call of a parsed
node tree: hashes {kind => function|operator|aggregate|window, oid,
format (CoercionForm of a function call: 0 call, 1 explicit cast, 2
implicit cast, 3 SQL syntax), args => [ {type, written, literal} ], result,
star (aggregate(*)), array_right (the right argument of an operator applied
with ANY/ALL to an array)}.

=cut

sub calls_in_tree
{
	my ($tree) = @_;
	my @calls;
	my $walk;
	$walk = sub {
		my ($x) = @_;
		if (ref $x eq 'ARRAY')
		{
			$walk->($_) for @$x;
			return;
		}
		return unless ref $x eq 'HASH';
		my $ty = $x->{_type};
		my @args = map { _arg_info($_) } @{ $x->{args} // [] };
		if ($ty eq 'FUNCEXPR')
		{
			push @calls, { kind => 'function', oid => $x->{funcid}, format => $x->{funcformat},
				args => \@args, result => $x->{funcresulttype},
				retset => ($x->{funcretset} // '') eq 'true' };
		}
		elsif ($ty eq 'OPEXPR' || $ty eq 'DISTINCTEXPR' || $ty eq 'NULLIFEXPR')
		{
			push @calls, { kind => 'operator', oid => $x->{opno}, args => \@args,
				result => $x->{opresulttype} // 16 };
		}
		elsif ($ty eq 'SCALARARRAYOPEXPR')
		{
			push @calls, { kind => 'operator', oid => $x->{opno}, args => \@args,
				result => 16, array_right => 1 };
		}
		elsif ($ty eq 'ROWCOMPAREEXPR')
		{
			my @ops = grep { $_ ne 'o' } @{ $x->{opnos} // [] };
			for my $k (0 .. $#ops)
			{
				push @calls, { kind => 'operator', oid => $ops[$k], result => 16,
					args => [ _arg_info($x->{largs}[$k]), _arg_info($x->{rargs}[$k]) ] };
			}
		}
		elsif ($ty eq 'AGGREF' || $ty eq 'WINDOWFUNC')
		{
			my $agg = $ty eq 'AGGREF';
			# (an aggregate's ORDER BY expressions are junk entries of its args)
			my @a = map { _arg_info(ref $_ eq 'HASH' && $_->{_type} eq 'TARGETENTRY' ? $_->{expr} : $_) }
			  grep { !(ref $_ eq 'HASH' && ($_->{resjunk} // '') eq 'true') } @{ $x->{args} // [] };
			push @calls, { kind => $agg ? 'aggregate' : 'window',
				oid => $agg ? $x->{aggfnoid} : $x->{winfnoid}, args => \@a,
				result => $agg ? $x->{aggtype} : $x->{wintype},
				star => ($x->{ $agg ? 'aggstar' : 'winstar' } // '') eq 'true' };
		}
		for my $k (sort keys %$x)
		{
			$walk->($x->{$k}) if ref $x->{$k};
		}
	};
	$walk->($tree);
	return @calls;
}

=pod

=back

=cut

1;
