# bash completion for cassini(1), the client of saturnd.
#
# pip installs it as PREFIX/share/bash-completion/completions/cassini.bash. With the
# bash-completion package, a PREFIX of ~/.local or /usr/local is searched, and the file
# is loaded when first needed. Otherwise add to ~/.bashrc:
#   source PREFIX/share/bash-completion/completions/cassini.bash
#
# Completes the options, the task ids after -r -x -o -e -n (asked of the daemon with
# `cassini -l`, through the pipes directory of a -p already on the line), directories
# after -p, files after --import, and after -c the command and its arguments.
# Options are read like cassini reads them (POSIX getopt): they end at the first word
# that is not an option, which starts the command of -c.

_cassini_task_ids()
{
    # The ids of `cassini [-p DIR] -l`: its lines start with "ID: ".
    command cassini "$@" -l 2>/dev/null |
        command sed -n 's/^\([0-9][0-9]*\): .*/\1/p'
}

_cassini()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    local word pending='' create='' letter i=1 j
    local -a pipes=()

    # Walk the words before the cursor as getopt would.
    while ((i < COMP_CWORD)); do
        word=${COMP_WORDS[i]}
        if [[ -n $pending ]]; then
            # The argument of the previous option. `--import=FILE` reaches us as
            # three words: --import, =, FILE.
            if [[ $pending == import && $word == = ]]; then
                ((i++))
                continue
            fi
            [[ $pending == p ]] && pipes=(-p "$word")
            pending=''
        elif [[ $word == -- ]]; then
            ((i++))
            break
        elif [[ $word == --import ]]; then
            pending=import
        elif [[ $word == --* ]]; then
            :
        elif [[ $word == -?* ]]; then
            # A cluster of letters such as -lv, or an option with its argument: -p/dir.
            for ((j = 1; j < ${#word}; j++)); do
                letter=${word:j:1}
                case $letter in
                    c) create=1 ;;
                    [mHdprxoenN])
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
        p)
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
        [rxoen])
            mapfile -t COMPREPLY < <(compgen -W "$(_cassini_task_ids "${pipes[@]}")" -- "$cur")
            return
            ;;
        ?*)
            return # a timing field or a count: nothing to offer
            ;;
    esac
    if [[ -n $create && $cur != -* ]]; then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur")
        return
    fi
    mapfile -t COMPREPLY < <(compgen -W '-h -l -v -c -m -H -d -r -x -o -e -n -N -q -p
        --export --import --json --help' -- "$cur")
}

complete -F _cassini cassini
