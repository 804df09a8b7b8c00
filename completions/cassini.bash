# bash completion for cassini(1), the client of saturnd.
#
# pip installs it as PREFIX/share/bash-completion/completions/cassini.bash. With the
# bash-completion package, a PREFIX of ~/.local or /usr/local is searched, and the file
# is loaded when first needed. Otherwise add to ~/.bashrc:
#   source PREFIX/share/bash-completion/completions/cassini.bash
#
# Completes the options (once an operation such as -l or -r is on the line, only those
# valid with it), the task ids after -r -x -o -e -n --run --pause --resume --kill in
# numeric order (asked of the daemon
# with `cassini -l`, through the pipes directory of a -p already on the line, else of
# $SATURND_PIPES_DIR, else the default), durations after --timeout and --jitter,
# day names after -d, month names after --month,
# the @ names after --cron, time zones after --tz, variable names after --env,
# directories after -p and --export-systemd, files after --import (then --replace and
# --check), host names after --host (valid with every operation, repeatable), and after
# -c the command and its arguments.
# Options are read like cassini reads them (POSIX getopt): they end at the first word
# that is not an option, which starts the command of -c.

_cassini_long()
{
    # The long option a word names, as getopt reads it: the exact name, else the only
    # one it is a prefix of (nothing when there are none or several).
    local name=${1#--} option found=''
    for option in catch-up check cron dom edit env export export-k8s export-systemd help \
        host image import jitter json kill month no-overlap on-failure pause replace resume \
        run start timeout tz version; do
        [[ $option == "$name" ]] && { printf '%s' "$option"; return; }
        if [[ $option == "$name"* ]]; then
            [[ -n $found ]] && return
            found=$option
        fi
    done
    printf '%s' "$found"
}

_cassini_task_ids()
{
    # The ids of `cassini [-p DIR] -l`: its lines start with "ID: ", by increasing id.
    command cassini "$@" -l 2>/dev/null |
        command sed -n 's/^\([0-9][0-9]*\): .*/\1/p'
}

# The options that may follow each operation (cassini/cli.py's _MODIFIERS): the others
# are refused there. No operation yet: any option.
declare -gA _cassini_options_after=(
    [l]='-h --help -p --host -l -v --json'
    [c]='-h --help -p --host -c -m -H -d --dom --month --cron --tz --env
        --timeout --jitter --no-overlap --catch-up --on-failure'
    [x]='-h --help -p --host -v --json'
    [n]='-h --help -p --host -N --json'
    [r]='-h --help -p --host'
    [o]='-h --help -p --host --start'
    [e]='-h --help -p --host --start'
    [run]='-h --help -p --host'
    [pause]='-h --help -p --host'
    [resume]='-h --help -p --host'
    [kill]='-h --help -p --host'
    [q]='-h --help -p --host'
    [export]='-h --help -p --host'
    [import]='-h --help -p --host --replace --check'
    [edit]='-h --help -p --host'
    [version]='-h --help -p --host'
    [export-k8s]='-h --help -p --host --image'
    [export-systemd]='-h --help -p --host'
)

_cassini()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    local word pending='' create='' operation='' given=' ' letter long i=1 j
    local -a pipes=()

    # Walk the words before the cursor as getopt would.
    while ((i < COMP_CWORD)); do
        word=${COMP_WORDS[i]}
        if [[ -n $pending ]]; then
            # The argument of the previous option. `--import=FILE` reaches us as
            # three words: --import, =, FILE.
            if [[ $pending == @(import|export-systemd|dom|month|cron|tz|env|run|pause|resume|kill) &&
                $word == = ]] ||
                [[ $pending == @(timeout|jitter|on-failure|start|image|host) && $word == = ]]; then
                ((i++))
                continue
            fi
            [[ $pending == p ]] && pipes=(-p "$word")
            pending=''
        elif [[ $word == -- ]]; then
            ((i++))
            break
        elif [[ ${#word} -gt 2 && --import == "$word"* ]]; then
            pending=import # --import or a prefix of it, as getopt takes it
            operation=import
        elif [[ ${word%%=*} == --@(d|do|dom|m|mo|mon|mont|month|cr|cro|cron|tz|en|env) ]]; then
            # The options of -c that take a value (getopt takes any unique prefix: --c
            # is --check or --cron, --e --edit, --env or --export); with
            # `=VALUE` in the same word, nothing is pending.
            local long
            case ${word:2:1} in
                d) long=dom ;; m) long=month ;; c) long=cron ;; t) long=tz ;; e) long=env ;;
            esac
            given+="--$long "
            [[ $word == *=* ]] || pending=$long
        elif [[ $word == --export ]]; then
            operation=export # its shorter prefixes are also the two others': ambiguous
        elif [[ ${#word} -gt 9 && --export-k8s == "$word"* ]]; then
            operation=export-k8s
        elif [[ ${#word} -gt 9 && --export-systemd == "${word%%=*}"* ]]; then
            operation=export-systemd
            [[ $word == *=* ]] || pending=export-systemd
        elif [[ ${#word} -gt 3 && --edit == "$word"* ]]; then
            operation=edit
        elif [[ ${#word} -gt 2 && --version == "$word"* ]]; then
            operation=version
        elif [[ $word == --?* ]] && long=$(_cassini_long "${word%%=*}") &&
            [[ $long == @(run|pause|resume|kill|timeout|jitter|on-failure|start|no-overlap|catch-up|image) ]]; then
            # Issue 14's options: acting on a task (an operation taking an id), the run
            # policies of -c and -o/-e's --start (a value), and the two policy flags.
            case $long in
                run | pause | resume | kill) operation=$long ;;&
                no-overlap | catch-up) given+="--$long " ;;
                *)
                    given+="--$long "
                    [[ $word == *=* ]] || pending=$long
                    ;;
            esac
        elif [[ $word == --?* && $(_cassini_long "${word%%=*}") == host ]]; then
            # --host DEST: on another machine over ssh; any operation, any number of times.
            [[ $word == *=* ]] || pending=host
        elif [[ $word == --* ]]; then
            :
        elif [[ $word == -?* ]]; then
            # A cluster of letters such as -lv, or an option with its argument: -p/dir.
            for ((j = 1; j < ${#word}; j++)); do
                letter=${word:j:1}
                case $letter in
                    [lcqrxoen]) operation=$letter ;;&
                    c) create=1 ;;
                    [mHdprxoenN])
                        given+="-$letter "
                        if ((j + 1 < ${#word})); then
                            [[ $letter == p ]] && pipes=(-p "${word:j+1}")
                        else
                            pending=$letter
                        fi
                        break
                        ;;
                esac
            done
        else
            break # the first operand: the command of -c
        fi
        ((i++))
    done
    # A leading ~ of -p's directory, as the shell would have expanded it.
    if ((${#pipes[@]})) && [[ ${pipes[1]} == '~' || ${pipes[1]} == '~/'* ]]; then
        pipes[1]=$HOME${pipes[1]#'~'}
    fi
    # Without -p, cassini reads SATURND_PIPES_DIR; pass it on even if not exported.
    if ((${#pipes[@]} == 0)) && [[ -n ${SATURND_PIPES_DIR-} ]]; then
        pipes=(-p "$SATURND_PIPES_DIR")
    fi

    COMPREPLY=()
    if ((i < COMP_CWORD)); then
        # Inside the command of -c: complete it as a command line of its own.
        if declare -F _command_offset >/dev/null; then
            _command_offset "$i"
        else
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
        fi
        return
    fi
    case $pending in
        p | export-systemd)
            [[ $cur == = ]] && cur=''
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -d -- "$cur")
            return
            ;;
        import)
            [[ $cur == = ]] && cur=''
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur")
            return
            ;;
        [rxoen] | run | pause | resume | kill)
            [[ $cur == = ]] && cur=''
            mapfile -t COMPREPLY < <(compgen -W "$(_cassini_task_ids "${pipes[@]}")" -- "$cur")
            # Keep cassini's order, by increasing id: bash would sort 10 before 2.
            compopt -o nosort 2>/dev/null
            return
            ;;
        host)
            [[ $cur == = ]] && cur=''
            mapfile -t COMPREPLY < <(compgen -A hostname -- "$cur")
            return
            ;;
        month)
            local done_part=${cur%"${cur##*[,-]}"}
            mapfile -t COMPREPLY < <(compgen -P "$done_part" -W 'jan feb mar apr may jun jul
                aug sep oct nov dec january february march april june july august
                september october november december' -- "${cur##*[,-]}")
            return
            ;;
        cron)
            [[ $cur == = ]] && cur=''
            mapfile -t COMPREPLY < <(compgen -W '@reboot @hourly @daily @midnight @weekly
                @monthly @yearly @annually' -- "$cur")
            return
            ;;
        tz)
            # The zones of the system's database: its files whose names start with a
            # capital (posix/ and right/ are copies, the lower-case files are not zones).
            [[ $cur == = ]] && cur=''
            local zones=${TZDIR:-/usr/share/zoneinfo}
            mapfile -t COMPREPLY < <(cd "$zones" 2>/dev/null &&
                compgen -W "$(command find [A-Z]* \( -type f -o -type l \) 2>/dev/null)" -- "$cur")
            return
            ;;
        env)
            [[ $cur == = ]] && cur=''
            [[ $cur == *=* ]] && return # the value: anything
            compopt -o nospace 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -e -S = -- "$cur")
            return
            ;;
        d)
            # Day names, short and full, after the last , or - of a list or range.
            local done_part=${cur%"${cur##*[,-]}"}
            mapfile -t COMPREPLY < <(compgen -P "$done_part" -W 'sun mon tue wed thu fri sat
                sunday monday tuesday wednesday thursday friday saturday' -- "${cur##*[,-]}")
            return
            ;;
        timeout | jitter)
            [[ $cur == = ]] && cur=''
            # After a number, the units that may follow it: smaller than the last one.
            [[ $cur == *[0-9] ]] || return
            local before=${cur%"${cur##*[!0-9]}"} units='d h m s' unit
            case ${before: -1} in d) units='h m s' ;; h) units='m s' ;; m) units=s ;; s) units='' ;; esac
            for unit in $units; do COMPREPLY+=("$cur$unit"); done
            return
            ;;
        ?*)
            return # a timing field, a count, a command or a time: nothing to offer
            ;;
    esac
    if [[ -n $create && $cur != -* ]]; then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        return
    fi
    local offered='-h -l -v -c -m -H -d -r -x -o -e -n -N -q -p --export --export-k8s
        --export-systemd --image --import --json
        --help --version --dom --month --cron --tz --env --replace --check --edit
        --timeout --jitter --no-overlap --catch-up --on-failure --start
        --run --pause --resume --kill --host'
    [[ -n $operation ]] && offered=${_cassini_options_after[$operation]}
    # --cron says all five fields: none of theirs with it.
    if [[ $given == *" --cron "* ]]; then
        given+='-m -H -d --dom --month '
    elif [[ $given == *" -"[mHd]" "* || $given == *" --"@(dom|month)" "* ]]; then
        given+='--cron '
    fi
    # cassini refuses a second -m -H -d -N -p --dom --month --cron --tz --timeout --jitter
    # --on-failure --start, even with the same value (--env may be repeated).
    offered=" ${offered//$'\n'/ } "
    for word in -m -H -d -N -p --dom --month --cron --tz --timeout --jitter --on-failure \
        --start --no-overlap --catch-up --image; do
        [[ $given == *" $word "* ]] && offered=${offered/ $word / }
    done
    mapfile -t COMPREPLY < <(compgen -W "$offered" -- "$cur")
}

complete -F _cassini cassini
